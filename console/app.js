// The console's entry: login, the hash router (#/overview, #/endpoints/ep_…, #/events/evt_…,
// #/dead-letters, #/search, #/tokens), the header, and timers that stop when the view changes.

import { ApiError, identify, session, setUnauthorizedHandler } from "./api.js";
import { errorText, field, fill, flash, h, tickTimes } from "./dom.js";
import { endpointView, overviewView, searchView, tokensView } from "./views.js";
import { eventView } from "./timeline.js";
import { deadLettersView } from "./deadletters.js";

const main = () => document.getElementById("main");

/** Routes: a pattern on the hash's path, and the view it shows. */
const ROUTES = [
  [/^\/overview$/, overviewView],
  [/^\/endpoints\/([^/]+)$/, endpointView],
  [/^\/events\/([^/]+)$/, eventView],
  [/^\/dead-letters$/, deadLettersView],
  [/^\/search$/, searchView],
  [/^\/tokens$/, tokensView],
];

let current = null; // the view's context: its timers, and whether it is still shown
let loginMessage = "";

/** What a view gets: its place on the page, the query, and timers cleared when it goes. */
function context(query) {
  const ctx = {
    query,
    live: true,
    timers: [],
    /** Stops the view's refreshing; it stays shown. */
    stop() {
      ctx.timers.forEach(clearInterval);
    },
    /** Runs `fn` now and then every `ms` while the view is shown (not while a run is going). */
    every(ms, fn) {
      let busy = false;
      const run = async () => {
        if (busy || !ctx.live) return;
        busy = true;
        try {
          await fn();
        } catch (e) {
          if (!(e instanceof ApiError && e.status === 401)) flash(errorText(e), "error");
        } finally {
          busy = false;
        }
      };
      ctx.timers.push(setInterval(run, ms));
      return run();
    },
  };
  return ctx;
}

function leave() {
  if (!current) return;
  current.live = false;
  current.timers.forEach(clearInterval);
  current = null;
}

async function route() {
  leave();
  const hash = location.hash.replace(/^#/, "") || "/overview";
  const [path, search] = hash.split("?");
  if (!session.token) return showLogin();
  showChrome();
  const ctx = (current = context(new URLSearchParams(search || "")));
  for (const [pattern, view] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    const place = fill(main(), h("p", { class: "muted" }, "Loading…"));
    place.setAttribute("aria-busy", "true");
    try {
      await view(place, ctx, ...m.slice(1).map(decodeURIComponent));
      // A keyboard user continues from the new view, not from the link that led there.
      if (ctx.live && !place.contains(document.activeElement)) place.focus({ preventScroll: true });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      if (ctx.live) fill(place, h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, errorText(e)));
    } finally {
      place.removeAttribute("aria-busy");
    }
    markCurrentNav(path);
    return;
  }
  fill(main(), h("h1", {}, "Not found"), h("p", {}, "No such page. "), h("a", { href: "#/overview" }, "Go to the overview"));
}

function markCurrentNav(path) {
  for (const a of document.querySelectorAll("#nav a")) {
    if (path.startsWith(a.getAttribute("href").slice(1))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function showChrome() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("nav-tokens").hidden = !session.admin;
  const who = session.admin
    ? "admin token"
    : `partner token${session.partner ? ` · ${session.partner}` : ""}${session.environment ? ` · ${session.environment}` : ""}${
        session.readOnly ? " · read-only" : ""
      }`;
  document.getElementById("who").textContent = who;
}

function showLogin() {
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const message = h("p", { id: "login-message", class: "muted", role: "alert" }, loginMessage);
  const submit = h("button", { type: "submit", id: "login" }, "Log in");
  const form = h(
    "form",
    {
      class: "login card",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        submit.disabled = true;
        message.className = "muted";
        message.textContent = "Checking the token…";
        try {
          const info = await identify(token);
          session.start(token, info.kind, info);
          loginMessage = "";
          input.value = "";
          if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
          else route();
        } catch (e) {
          message.className = "error";
          message.textContent =
            e instanceof ApiError && e.status === 401 ? "The daemon does not accept this token." : errorText(e);
          submit.disabled = false;
          input.focus();
        }
      },
    },
    h("h1", {}, "Log in"),
    h(
      "p",
      {},
      "Paste an admin token or a partner token. It is kept in this browser tab only, until you log out or close the tab."
    ),
    field("Token", input),
    submit,
    message
  );
  fill(main(), form);
  input.focus();
}

function logout() {
  leave();
  session.end();
  loginMessage = "Logged out.";
  if (location.hash === "#/login") route();
  else location.hash = "#/login";
}

setUnauthorizedHandler((message) => {
  leave();
  loginMessage = message;
  route();
});

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", logout);
setInterval(() => tickTimes(), 1000);
route();
