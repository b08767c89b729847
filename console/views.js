// Views: the overview (queue and endpoint health, live), one endpoint (charts, health, actions,
// recent deliveries), search by event id, and partner tokens (admin only).

import { ApiError, del, enc, get, post, session } from "./api.js";
import { badge, confirmButton, duration, errorText, field, fill, flash, h, table, time } from "./dom.js";
import { latencyChart, legend, rateChart, successChart } from "./chart.js";

/** Events this tab has opened or sent, newest first: {id, type, endpoints, at}. */
export const recent = {
  list() {
    try {
      return JSON.parse(sessionStorage.getItem("preflix.recent") || "[]");
    } catch (e) {
      return [];
    }
  },
  add(item) {
    const list = this.list().filter((r) => r.id !== item.id);
    list.unshift({ ...item, at: item.at || new Date().toISOString() });
    sessionStorage.setItem("preflix.recent", JSON.stringify(list.slice(0, 30)));
  },
};

/** Re-renders `box` keeping keyboard focus on the element with the same data-key. */
function refill(box, ...children) {
  const focused = document.activeElement && box.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  fill(box, ...children);
  if (focused) {
    const again = box.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

const epLink = (id, text) => h("a", { href: `#/endpoints/${enc(id)}`, "data-key": `ep-${id}` }, text || id);
const healthBadge = (health) => badge(health, health);
const statusText = (code) => (code === null || code === undefined ? "—" : String(code));

function card(label, value, extra) {
  return h("div", { class: "card stat" }, h("span", { class: "label" }, label), h("strong", { class: "value" }, value), extra || null);
}

/** The latest events (`GET /v1/events`), newest first; `null` when the daemon has no such list. */
async function latestEvents(params) {
  try {
    return (await get(`/v1/events?${new URLSearchParams(params)}`)).events || [];
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/** Events with their deliveries (only those to `endpointId`, when given). */
function eventsTable(caption, events, endpointId) {
  const rows = events.map((ev) => {
    const ds = (ev.deliveries || []).filter((d) => !endpointId || d.endpoint_id === endpointId);
    return [
      h("a", { href: `#/events/${enc(ev.id)}`, "data-key": `evt-${ev.id}` }, ev.id),
      ev.type,
      session.admin ? `${ev.partner_id} · ${ev.environment}` : ev.environment,
      time(ev.received_at),
      ds.length
        ? h(
            "div",
            { class: "deliveries" },
            ds.map((d) =>
              h(
                "div",
                {},
                badge(d.status, d.status),
                ` ${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`,
                d.next_attempt_at && (d.status === "pending" || d.status === "in_flight") ? [" · ", time(d.next_attempt_at, "next ")] : null,
                endpointId ? null : [" → ", epLink(d.endpoint_id)]
              )
            )
          )
        : h("span", { class: "muted" }, "no delivery"),
    ];
  });
  return table(caption, ["Event", "Type", session.admin ? "Partner" : "Environment", "Received", "Deliveries"], rows, "No events yet.");
}

// ---- Overview ----

export async function overviewView(place, ctx) {
  const live = h("div", { id: "overview", "aria-live": "off" });
  const stamp = h("p", { class: "muted small" });
  fill(place, h("h1", {}, "Overview"), live, stamp);
  await ctx.every(4000, async () => {
    if (session.admin) await adminOverview(live);
    else await partnerOverview(live);
    if (ctx.live) stamp.textContent = `Refreshed every 4 s · last at ${new Date().toLocaleTimeString()}`;
  });
}

async function adminOverview(box) {
  const [s, events] = await Promise.all([get("/status"), latestEvents({ limit: "10" })]);
  const q = s.queue || {};
  const age = q.oldest_pending_age_seconds;
  const rows = (s.endpoints || []).map((e) => [
    h("div", {}, epLink(e.id), h("div", { class: "muted small url" }, e.url)),
    e.partner_id,
    e.environment,
    healthBadge(e.health),
    String(e.consecutive_failures ?? 0),
    statusText(e.last_status_code),
    time(e.last_success_at),
    String(e.pending ?? 0),
    e.pending ? time(e.next_attempt_at) : h("span", { class: "muted" }, "—"),
  ]);
  refill(
    box,
    h(
      "section",
      { class: "cards", "aria-label": "Queue" },
      card("Pending", String(q.pending ?? 0)),
      card("Retrying", String(q.retrying ?? 0)),
      card("In flight", String(q.in_flight ?? 0)),
      card("Oldest pending", age === null || age === undefined ? "—" : duration(age)),
      card("Dead letters", h("a", { href: "#/dead-letters", "data-key": "dl" }, String(s.dead_letters ?? 0)))
    ),
    h("h2", {}, `Endpoints (${rows.length})`),
    table(
      "Every endpoint with its health",
      ["Endpoint", "Partner", "Environment", "Health", "Failures in a row", "Last status", "Last success", "Pending", "Next attempt"],
      rows,
      "No endpoints yet."
    ),
    events ? [h("h2", {}, "Latest events"), eventsTable("The latest events", events)] : null
  );
}

/** Stats per endpoint for the partner overview, fetched at most every 30 s each: {at, value}. */
const statsCache = new Map();

async function statsOf(id) {
  const cached = statsCache.get(id);
  if (cached && Date.now() - cached.at < 30000) return cached.value;
  let value = null;
  try {
    value = await get(`/v1/endpoints/${enc(id)}/stats?window=24h`);
  } catch (e) {
    if (e.status === 401) throw e;
  }
  statsCache.set(id, { at: Date.now(), value });
  return value;
}

/**
 * A partner token cannot read /status: its endpoints' health is read from their stats. The last
 * hour with attempts decides: only failures there is "failing".
 */
function partnerHealth(ep, stats) {
  if (!ep.enabled) return [badge("disabled", "disabled"), ep.disabled_reason || ""];
  if (!stats) return [h("span", { class: "muted" }, "—"), ""];
  const buckets = stats.buckets || [];
  const attempts = buckets.reduce((a, b) => a + (b.succeeded || 0) + (b.failed || 0), 0);
  const last = [...buckets].reverse().find((b) => (b.succeeded || 0) + (b.failed || 0) > 0);
  const summary = attempts ? `${attempts} attempt${attempts === 1 ? "" : "s"} · ${((stats.success_rate ?? 1) * 100).toFixed(1)}% succeeded` : "no attempts";
  if (!last) return [badge("idle", "disabled"), summary];
  return [last.succeeded ? badge("healthy", "healthy") : badge("failing", "failing"), summary];
}

async function partnerOverview(box) {
  const [eps, dls, events] = await Promise.all([get("/v1/endpoints"), get("/v1/dead-letters?limit=100"), latestEvents({ limit: "10" })]);
  const endpoints = eps.endpoints || [];
  const dead = (dls.dead_letters || []).length;
  const stats = await Promise.all(endpoints.slice(0, 50).map((e) => statsOf(e.id)));
  const rows = endpoints.map((e, i) => {
    const [health, summary] = partnerHealth(e, stats[i]);
    return [
      h("div", {}, epLink(e.id), h("div", { class: "muted small url" }, e.url)),
      e.environment,
      health,
      summary,
      (e.event_types || []).join(", "),
      e.description || "",
    ];
  });
  refill(
    box,
    h(
      "section",
      { class: "cards", "aria-label": "Summary" },
      card("Endpoints", String(endpoints.length)),
      card("Dead letters", h("a", { href: "#/dead-letters", "data-key": "dl" }, dls.next ? `${dead}+` : String(dead)))
    ),
    h("h2", {}, `Your endpoints (${rows.length})`),
    table("Your endpoints", ["Endpoint", "Environment", "Health", "Last 24 hours", "Event types", "Description"], rows, "No endpoints for this token."),
    events ? [h("h2", {}, "Latest events"), eventsTable("Your latest events", events)] : null
  );
}

// ---- Endpoint ----

export async function endpointView(place, ctx, id) {
  let ep;
  try {
    ep = await get(`/v1/endpoints/${enc(id)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      fill(place, h("h1", {}, "Endpoint not found"), h("p", {}, `No endpoint ${id} is visible to this token.`));
      return;
    }
    throw e;
  }
  const details = h("section", { class: "card", "aria-labelledby": "ep-details" });
  const health = h("section", { class: "card", id: "ep-health", "aria-labelledby": "ep-health-h" });
  const stats = h("section", { class: "card", id: "ep-stats", "aria-labelledby": "ep-stats-h" });
  const actions = h("section", { class: "card", id: "ep-actions", "aria-labelledby": "ep-actions-h" });
  const deliveries = h("section", { class: "card", id: "ep-deliveries", "aria-labelledby": "ep-deliveries-h" });
  fill(
    place,
    h("p", { class: "crumbs" }, h("a", { href: "#/overview" }, "Overview"), " / endpoint"),
    h("h1", { class: "mono" }, ep.id),
    h("p", { class: "url mono" }, ep.url),
    h("div", { class: "grid two" }, details, health),
    stats,
    actions,
    deliveries
  );
  const showDetails = (ep) =>
    fill(
      details,
      h("h2", { id: "ep-details" }, "Details"),
      h(
        "dl",
        {},
        h("dt", {}, "Partner"),
        h("dd", {}, ep.partner_id),
        h("dt", {}, "Environment"),
        h("dd", {}, ep.environment),
        h("dt", {}, "State"),
        h("dd", { id: "ep-state" }, ep.enabled ? badge("enabled", "healthy") : badge("disabled", "disabled"), ep.disabled_reason ? ` ${ep.disabled_reason}` : ""),
        h("dt", {}, "Event types"),
        h("dd", {}, (ep.event_types || []).join(", ")),
        h("dt", {}, "Description"),
        h("dd", {}, ep.description || "—"),
        h("dt", {}, "Created"),
        h("dd", {}, time(ep.created_at))
      )
    );
  showDetails(ep);
  const state = { ep, showDetails, renderActions: null };
  state.renderActions = () => renderActions(actions, state);
  state.renderActions();

  ctx.every(5000, async () => {
    if (session.admin) {
      const s = await get("/status");
      const e = (s.endpoints || []).find((x) => x.id === ep.id);
      if (ctx.live && e) renderHealth(health, e);
    } else {
      const fresh = await get(`/v1/endpoints/${enc(id)}`);
      if (ctx.live) fill(health, h("h2", { id: "ep-health-h" }, "Health"), h("p", {}, fresh.enabled ? badge("enabled", "healthy") : badge("disabled", "disabled")));
    }
  });
  ctx.every(30000, () => renderStats(stats, ep.id, ctx));
  await ctx.every(5000, () => renderDeliveries(deliveries, ep.id));
}

function renderHealth(box, e) {
  fill(
    box,
    h("h2", { id: "ep-health-h" }, "Health"),
    h(
      "dl",
      {},
      h("dt", {}, "Health"),
      h("dd", {}, healthBadge(e.health)),
      h("dt", {}, "Failures in a row"),
      h("dd", {}, String(e.consecutive_failures ?? 0)),
      h("dt", {}, "Last status"),
      h("dd", {}, statusText(e.last_status_code), e.consecutive_failures && e.last_error ? ` · ${e.last_error}` : ""),
      h("dt", {}, "Last success"),
      h("dd", {}, time(e.last_success_at)),
      h("dt", {}, "Last failure"),
      h("dd", {}, time(e.last_failure_at)),
      h("dt", {}, "Pending"),
      h("dd", {}, String(e.pending ?? 0)),
      h("dt", {}, "Next attempt"),
      h("dd", {}, e.pending ? time(e.next_attempt_at) : "—")
    )
  );
}

async function renderStats(box, id, ctx) {
  let stats;
  try {
    stats = await get(`/v1/endpoints/${enc(id)}/stats?window=24h`);
  } catch (e) {
    if (e instanceof ApiError && e.status !== 401) {
      fill(box, h("h2", { id: "ep-stats-h" }, "Last 24 hours"), h("p", { class: "muted" }, `Stats are not available: ${errorText(e)}`));
      return;
    }
    throw e;
  }
  if (!ctx.live) return;
  const buckets = stats.buckets || [];
  const attempts = buckets.reduce((a, b) => a + (b.succeeded || 0) + (b.failed || 0), 0);
  const rate = typeof stats.success_rate === "number" ? `${(stats.success_rate * 100).toFixed(1)}%` : "—";
  fill(
    box,
    h("h2", { id: "ep-stats-h" }, "Last 24 hours"),
    h("p", {}, `${attempts} attempt${attempts === 1 ? "" : "s"} · success rate ${rate}`),
    h(
      "div",
      { class: "charts" },
      h("figure", {}, h("figcaption", {}, "Delivery rate (attempts per hour)"), rateChart(buckets), legend([["ok", "succeeded"], ["bad", "failed"]])),
      h("figure", {}, h("figcaption", {}, "Success rate per hour"), successChart(buckets)),
      h("figure", {}, h("figcaption", {}, "Latency"), latencyChart(buckets), legend([["p50", "p50"], ["p95", "p95"]]))
    )
  );
}

function renderActions(box, state) {
  const { ep } = state;
  if (session.readOnly) {
    fill(box, h("h2", { id: "ep-actions-h" }, "Actions"), h("p", { class: "muted" }, "This token is read-only: it cannot change the endpoint."));
    return;
  }
  const out = h("div", { id: "action-result", role: "status", "aria-live": "polite" });
  const act = async (button, fn) => {
    button.disabled = true;
    try {
      await fn();
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        flash("This token may not do that.", "error");
        state.renderActions();
        return;
      }
      fill(out, h("p", { class: "error" }, errorText(e)));
    } finally {
      button.disabled = false;
    }
  };
  const toggle = h(
    "button",
    {
      type: "button",
      id: ep.enabled ? "disable" : "enable",
      onclick: () =>
        act(toggle, async () => {
          const updated = await post(`/v1/endpoints/${enc(ep.id)}/${ep.enabled ? "disable" : "enable"}`);
          state.ep = updated;
          state.showDetails(updated);
          state.renderActions();
          flash(updated.enabled ? "Endpoint enabled." : "Endpoint disabled: no new deliveries; pending ones wait.");
        }),
    },
    ep.enabled ? "Disable" : "Enable"
  );
  const rotate = confirmButton(
    "Rotate secret",
    "Rotate now? (click again)",
    (button) =>
      act(button, async () => {
        const r = await post(`/v1/endpoints/${enc(ep.id)}/rotate-secret`);
        fill(
          out,
          h(
            "div",
            { class: "secret" },
            h("p", {}, "The new secret, shown this once. Deliveries carry signatures under the old and the new secret for a day."),
            h("code", { id: "new-secret", tabindex: "0" }, r.secret)
          )
        );
      }),
    { id: "rotate" }
  );
  const select = h("select", { id: "sample-type" });
  get("/v1/event-types")
    .then((t) => {
      for (const type of t.event_types || []) {
        if (ep.event_types.includes("*") || ep.event_types.includes(type.type)) select.append(h("option", { value: type.type }, type.type));
      }
    })
    .catch((e) => flash(errorText(e), "error"));
  const send = h(
    "button",
    {
      type: "button",
      id: "send-sample",
      onclick: () =>
        act(send, async () => {
          const r = await post(`/v1/endpoints/${enc(ep.id)}/test`, { type: select.value });
          recent.add({ id: r.event_id, type: select.value, endpoints: [ep.id] });
          fill(out, h("p", {}, "Sample event sent: ", h("a", { href: `#/events/${enc(r.event_id)}`, id: "sample-link" }, r.event_id)));
        }),
    },
    "Send sample event"
  );
  fill(
    box,
    h("h2", { id: "ep-actions-h" }, "Actions"),
    h("div", { class: "actions" }, toggle, rotate),
    h("div", { class: "actions" }, field("Event type", select), send),
    out
  );
}

async function renderDeliveries(box, id) {
  const heading = h("h2", { id: "ep-deliveries-h" }, "Recent deliveries");
  const all = h("p", {}, h("a", { href: `#/dead-letters?endpoint_id=${enc(id)}` }, "This endpoint's dead letters"));
  const events = await latestEvents({ endpoint_id: id, limit: "20" });
  if (events) {
    refill(box, heading, eventsTable("Recent deliveries to this endpoint", events, id), all);
    return;
  }
  // A daemon without the events list: what this tab has seen.
  const rows = [];
  for (const r of recent.list().filter((r) => (r.endpoints || []).includes(id)).slice(0, 10)) {
    try {
      const ev = await get(`/v1/events/${enc(r.id)}`);
      for (const d of (ev.deliveries || []).filter((d) => d.endpoint_id === id)) {
        const last = (d.attempts || []).at(-1);
        rows.push([
          h("a", { href: `#/events/${enc(ev.id)}` }, ev.id),
          ev.type,
          badge(d.status, d.status),
          String((d.attempts || []).length),
          last ? (last.status_code ?? last.error ?? "—") : "—",
          time(last ? last.at : ev.received_at),
        ]);
      }
    } catch (e) {
      if (e.status === 401) throw e;
    }
  }
  fill(
    box,
    heading,
    table("Recent deliveries to this endpoint", ["Event", "Type", "Status", "Attempts", "Last answer", "When"], rows, "No recent deliveries known to this tab."),
    all
  );
}

// ---- Search ----

export async function searchView(place) {
  const input = h("input", { id: "event-id", name: "event-id", type: "search", required: true, autocomplete: "off", spellcheck: "false", placeholder: "evt_…" });
  const message = h("p", { id: "search-message", role: "alert" });
  const form = h(
    "form",
    {
      class: "card search",
      role: "search",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const id = input.value.trim();
        if (!id) return;
        try {
          await get(`/v1/events/${enc(id)}`);
          location.hash = `#/events/${enc(id)}`;
        } catch (e) {
          message.className = "error";
          message.textContent = e instanceof ApiError && e.status === 404 ? `No event ${id} is visible to this token.` : errorText(e);
        }
      },
    },
    field("Event id", input),
    h("button", { type: "submit", id: "search" }, "Find"),
    message
  );
  const rows = recent.list().map((r) => [h("a", { href: `#/events/${enc(r.id)}` }, r.id), r.type || "", time(r.at)]);
  fill(place, h("h1", {}, "Search"), form, h("h2", {}, "Opened in this tab"), table("Events opened in this tab", ["Event", "Type", "Opened"], rows, "None yet."));
  input.focus();
  const events = await latestEvents({ limit: "25" });
  if (events) place.append(h("h2", {}, "Latest events"), eventsTable("The latest events", events));
}

// ---- Partner tokens (admin) ----

export async function tokensView(place, ctx) {
  if (!session.admin) {
    fill(place, h("h1", {}, "Tokens"), h("p", {}, "Only the admin token manages partner tokens."));
    return;
  }
  const list = h("div", { id: "tokens" });
  const out = h("div", { id: "mint-result", role: "status", "aria-live": "polite" });
  const partner = h("input", { id: "mint-partner", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}", autocomplete: "off" });
  const env = h("select", { id: "mint-env" }, h("option", { value: "" }, "both"), h("option", { value: "production" }, "production"), h("option", { value: "sandbox" }, "sandbox"));
  const ttl = h("input", { id: "mint-ttl", value: "30d", required: true });
  const readOnly = h("input", { id: "mint-read-only", type: "checkbox" });
  const description = h("input", { id: "mint-description" });
  const load = async () => {
    const t = await get("/v1/tokens");
    const rows = (t.tokens || []).map((k) => [
      h("span", { class: "mono" }, k.id),
      k.partner_id,
      k.environment || "both",
      k.read_only ? "read-only" : "manage",
      badge(k.status || "active", k.status === "active" || !k.status ? "healthy" : "disabled"),
      time(k.expires_at),
      k.description || "",
      !k.status || k.status === "active"
        ? confirmButton(
            "Revoke",
            "Really revoke?",
            async () => {
              try {
                await del(`/v1/tokens/${enc(k.id)}`);
                flash(`Token ${k.id} revoked: its next request is refused.`);
              } catch (e) {
                flash(errorText(e), "error");
              }
              await load();
            },
            { class: "revoke", "data-id": k.id, "aria-label": `Revoke ${k.id}` }
          )
        : "",
    ]);
    if (ctx.live)
      fill(list, table("Partner tokens", ["Id", "Partner", "Environment", "Access", "Status", "Expires", "Description", "Actions"], rows, "No partner tokens."));
  };
  const form = h(
    "form",
    {
      class: "card",
      onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const t = await post("/v1/tokens", {
            partner_id: partner.value.trim(),
            environment: env.value || null,
            ttl: ttl.value.trim(),
            read_only: readOnly.checked,
            description: description.value,
          });
          fill(
            out,
            h(
              "div",
              { class: "secret" },
              h("p", {}, `Token ${t.id} for ${t.partner_id}, shown this once. Hand it to the partner over a channel you trust; they log in here with it.`),
              h("code", { id: "minted-token", tabindex: "0" }, t.token)
            )
          );
          await load();
        } catch (e) {
          fill(out, h("p", { class: "error" }, errorText(e)));
        }
      },
    },
    h("h2", {}, "Mint a partner token"),
    h("div", { class: "form-row" }, field("Partner id", partner), field("Environment", env), field("Lifetime", ttl), field("Description", description)),
    h("label", { class: "check" }, readOnly, " read-only"),
    h("button", { type: "submit", id: "mint" }, "Mint token"),
    out
  );
  fill(place, h("h1", {}, "Partner tokens"), form, h("h2", {}, "Tokens"), list);
  try {
    await load();
  } catch (e) {
    if (e.status === 401) throw e;
    fill(list, h("p", { class: "muted" }, `Tokens are not available: ${errorText(e)}`));
  }
}
