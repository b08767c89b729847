// The console's small DOM toolkit: elements built from data with textContent only (never
// parsed as markup), and times shown relative with the absolute time on hover.

/** h("a", {href: "#/x", class: "c"}, "text", child, ...): attributes set one by one, text as text. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** An SVG element (attributes only, no text from data except through textContent). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const UNITS = [
  ["d", 86400],
  ["h", 3600],
  ["min", 60],
  ["s", 1],
];

/** "4 min", "2 h 5 min", "12 s": a duration in seconds, for people. */
export function duration(seconds) {
  seconds = Math.round(Math.abs(seconds));
  if (seconds < 1) return "0 s";
  for (let i = 0; i < UNITS.length; i++) {
    const [unit, size] = UNITS[i];
    if (seconds >= size) {
      const whole = Math.floor(seconds / size);
      const rest = seconds - whole * size;
      const next = UNITS[i + 1];
      if (next && whole < 10 && rest >= next[1] && unit !== "min") {
        return `${whole} ${unit} ${Math.floor(rest / next[1])} ${next[0]}`;
      }
      return `${whole} ${unit}`;
    }
  }
  return `${seconds} s`;
}

/** "in 4 min", "3 h ago", "just now". */
export function relative(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const diff = (t - now) / 1000;
  if (Math.abs(diff) < 2) return "just now";
  return diff > 0 ? `in ${duration(diff)}` : `${duration(diff)} ago`;
}

/** The absolute time, in the reader's zone and in UTC. */
export function absolute(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.toLocaleString()} (${d.toISOString().replace(".000Z", "Z")})`;
}

/**
 * <time> showing the relative time, the absolute one on hover; "—" for null. With a prefix
 * ("next attempt "), the time is one to come: once passed it reads "due now".
 */
export function time(iso, prefix = "") {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: absolute(iso), "data-relative": prefix }, label(iso, prefix));
}

function label(iso, prefix) {
  if (prefix && Date.parse(iso) <= Date.now()) return `${prefix}due now`;
  return prefix + relative(iso);
}

/** Brings every <time data-relative> on the page up to date (called once a second). */
export function tickTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-relative]")) {
    el.textContent = label(el.getAttribute("datetime"), el.dataset.relative);
  }
}

/** A small coloured label: "healthy", "failing", "dead", "500". */
export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text}` }, text);
}

/** A table with a caption for screen readers; rows are arrays of cells (nodes or text). */
export function table(caption, headings, rows, empty = "Nothing here.") {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { "data-label": headings[i] }, c))))
      )
    )
  );
}

/** A button that acts only on its second press within 4 s ("Delete" → "Really delete?"). */
export function confirmButton(label, confirmLabel, action, attrs = {}) {
  let armed = false;
  let timer = null;
  const button = h("button", {
    type: "button",
    ...attrs,
    onclick: async () => {
      if (!armed) {
        armed = true;
        button.textContent = confirmLabel;
        button.classList.add("armed");
        timer = setTimeout(() => {
          armed = false;
          button.textContent = label;
          button.classList.remove("armed");
        }, 4000);
        return;
      }
      clearTimeout(timer);
      armed = false;
      button.textContent = label;
      button.classList.remove("armed");
      await action(button);
    },
  }, label);
  return button;
}

/** A labelled form control. */
export function field(label, control) {
  return h("label", { class: "field" }, h("span", {}, label), control);
}

/** "message (status code)" for an API error, the message for anything else. */
export function errorText(e) {
  if (e && e.status !== undefined && e.code) return `${e.message} (${e.status} ${e.code})`;
  return String((e && e.message) || e);
}

/** A short message under the page, read out by screen readers. */
export function flash(text, kind = "info") {
  const el = document.getElementById("flash");
  el.className = `flash ${kind}`;
  el.textContent = text;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => {
    el.textContent = "";
    el.className = "flash";
  }, 8000);
}
