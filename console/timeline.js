// The event timeline: one event, each of its deliveries, and every attempt on a time axis with its
// status code or error, latency and the next attempt due. Refreshed while a delivery is open.

import { ApiError, enc, get, post, session } from "./api.js";
import { absolute, badge, confirmButton, errorText, fill, flash, h, svg, time } from "./dom.js";
import { recent } from "./views.js";

export async function eventView(place, ctx, id) {
  let first = true;
  const body = h("div", { id: "event" });
  fill(place, h("p", { class: "crumbs" }, h("a", { href: "#/search" }, "Search"), " / event"), body);
  await ctx.every(3000, async () => {
    let ev;
    try {
      ev = await get(`/v1/events/${enc(id)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        fill(body, h("h1", {}, "Event not found"), h("p", {}, `No event ${id} is visible to this token.`));
        ctx.stop();
        return;
      }
      throw e;
    }
    if (!ctx.live) return;
    if (first) {
      recent.add({ id: ev.id, type: ev.type, endpoints: (ev.deliveries || []).map((d) => d.endpoint_id) });
      first = false;
    }
    const focused = document.activeElement && body.contains(document.activeElement) ? document.activeElement.id : null;
    const open = new Set([...body.querySelectorAll("details[open]")].map((d) => d.dataset.key));
    render(body, ev, ctx);
    for (const d of body.querySelectorAll("details")) if (open.has(d.dataset.key)) d.open = true;
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
    // Nothing more will happen to an event whose deliveries are all final.
    const openDeliveries = (ev.deliveries || []).some((d) => d.status === "pending" || d.status === "in_flight");
    if (!openDeliveries) ctx.stop();
  });
}

function render(body, ev, ctx) {
  const deliveries = ev.deliveries || [];
  fill(
    body,
    h("h1", { class: "mono" }, ev.id),
    h(
      "dl",
      { class: "card meta" },
      h("dt", {}, "Type"),
      h("dd", {}, ev.type),
      h("dt", {}, "Partner"),
      h("dd", {}, ev.partner_id, " · ", ev.environment),
      h("dt", {}, "Created"),
      h("dd", {}, time(ev.created_at)),
      h("dt", {}, "Received"),
      h("dd", {}, time(ev.received_at))
    ),
    h("details", { class: "card", "data-key": "payload" }, h("summary", {}, "Payload"), h("pre", { class: "payload" }, JSON.stringify(ev.data, null, 2))),
    redeliverButton(ev),
    h("h2", {}, `Deliveries (${deliveries.length})`),
    deliveries.length ? deliveries.map((d) => delivery(ev, d)) : h("p", { class: "muted" }, "This event matched no endpoint.")
  );
}

function redeliverButton(ev) {
  if (session.readOnly) return null;
  return h(
    "p",
    {},
    confirmButton(
      "Redeliver to every endpoint",
      "Redeliver now? (click again)",
      async () => {
        try {
          const r = await post(`/v1/events/${enc(ev.id)}/redeliver`);
          flash(`${r.deliveries} new deliveries queued.`);
          // Show them, and follow them until they are final.
          window.dispatchEvent(new HashChangeEvent("hashchange"));
        } catch (e) {
          flash(errorText(e), "error");
        }
      },
      { id: "redeliver" }
    )
  );
}

function delivery(ev, d) {
  const attempts = d.attempts || [];
  const waiting = d.status === "pending" || d.status === "in_flight";
  return h(
    "section",
    { class: "card delivery", "data-delivery": d.id, "aria-label": `Delivery ${d.id}` },
    h(
      "h3",
      {},
      badge(d.status, d.status),
      " ",
      h("span", { class: "mono" }, d.id),
      " → ",
      h("a", { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id)
    ),
    h(
      "p",
      { class: "next" },
      waiting && d.next_attempt_at
        ? time(d.next_attempt_at, "next attempt ")
        : d.status === "succeeded"
          ? "delivered"
          : d.status === "dead"
            ? h("span", {}, "dead-lettered: ", h("a", { href: `#/dead-letters?endpoint_id=${enc(d.endpoint_id)}` }, "review"))
            : d.status
    ),
    axis(ev, d),
    attempts.length
      ? h("ol", { class: "attempts" }, attempts.map((a) => attempt(d, a)))
      : h("p", { class: "muted" }, "No attempt yet.")
  );
}

function attempt(d, a) {
  const ok = a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
  return h(
    "li",
    { class: `attempt ${ok ? "ok" : "bad"}`, "data-attempt": a.n },
    h("span", { class: "n" }, `Attempt ${a.n}`),
    " ",
    time(a.at),
    " ",
    a.status_code !== null && a.status_code !== undefined ? badge(String(a.status_code), ok ? "ok" : "bad") : badge("no response", "bad"),
    " ",
    h("span", { class: "latency" }, `${a.duration_ms} ms`),
    a.error ? h("span", { class: "attempt-error" }, ` ${a.error}`) : null,
    a.response_snippet
      ? h("details", { "data-key": `${d.id}-${a.n}` }, h("summary", {}, "Response body"), h("pre", { class: "snippet" }, a.response_snippet))
      : null
  );
}

/** The attempts of one delivery on a line from reception to the last attempt or the next one due. */
function axis(ev, d) {
  const W = 1000;
  const H = 58;
  const L = 14;
  const R = 14;
  const attempts = d.attempts || [];
  const t0 = Date.parse(ev.received_at);
  const times = attempts.map((a) => Date.parse(a.at));
  const next = d.next_attempt_at && (d.status === "pending" || d.status === "in_flight") ? Date.parse(d.next_attempt_at) : null;
  const t1 = Math.max(t0 + 1000, ...times, next || 0);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "axis-chart", role: "img", "aria-label": `Attempts of ${d.id} over time` });
  root.append(svg("line", { x1: L, x2: W - R, y1: 22, y2: 22, class: "axis-line" }));
  const label = (tx, text, anchor) => {
    const el = svg("text", { x: tx, y: 52, class: "axis", "text-anchor": anchor });
    el.textContent = text;
    return el;
  };
  root.append(label(L, "received", "start"));
  root.append(label(W - R, new Date(t1).toLocaleTimeString(), "end"));
  attempts.forEach((a, i) => {
    const ok = a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
    const cx = x(times[i]);
    const dot = svg("circle", { cx: cx.toFixed(1), cy: 22, r: 7, class: `mark ${ok ? "ok" : "bad"}` });
    const title = svg("title", {});
    title.textContent = `Attempt ${a.n}: ${a.status_code ?? a.error ?? "no response"}, ${a.duration_ms} ms, ${absolute(a.at)}`;
    dot.append(title);
    root.append(dot);
    const code = svg("text", { x: cx.toFixed(1), y: 10, class: "axis", "text-anchor": "middle" });
    code.textContent = a.status_code === null || a.status_code === undefined ? "err" : String(a.status_code);
    root.append(code);
  });
  if (next) {
    const dot = svg("circle", { cx: x(next).toFixed(1), cy: 22, r: 7, class: "mark next" });
    const title = svg("title", {});
    title.textContent = `Next attempt due ${absolute(d.next_attempt_at)}`;
    dot.append(title);
    root.append(dot);
  }
  return root;
}
