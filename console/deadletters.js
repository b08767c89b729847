// Dead-letter review: the queue filtered by endpoint, event type and status code; retry one, retry
// all that match the filter, delete one.

import { ApiError, del, enc, get, post, session } from "./api.js";
import { badge, confirmButton, errorText, field, fill, flash, h, table, time } from "./dom.js";

export async function deadLettersView(place, ctx) {
  const q = ctx.query;
  const filter = {
    endpoint_id: q.get("endpoint_id") || "",
    event_type: q.get("event_type") || "",
    status: q.get("status") || "",
  };
  const endpointSel = h("select", { id: "f-endpoint", name: "endpoint_id" }, h("option", { value: "" }, "any endpoint"));
  const typeSel = h("select", { id: "f-type", name: "event_type" }, h("option", { value: "" }, "any type"));
  const status = h("input", { id: "f-status", name: "status", inputmode: "numeric", pattern: "[0-9]{3}|none", placeholder: "e.g. 500, or none", value: filter.status, size: 10 });
  const [eps, types] = await Promise.all([get("/v1/endpoints"), get("/v1/event-types")]);
  for (const e of eps.endpoints || []) endpointSel.append(h("option", { value: e.id }, `${e.id} · ${e.partner_id} · ${e.url}`));
  for (const t of types.event_types || []) typeSel.append(h("option", { value: t.type }, t.type));
  endpointSel.value = filter.endpoint_id;
  typeSel.value = filter.event_type;

  const form = h(
    "form",
    {
      class: "card filters",
      "aria-label": "Filter dead letters",
      onsubmit: (ev) => {
        ev.preventDefault();
        const p = new URLSearchParams();
        if (endpointSel.value) p.set("endpoint_id", endpointSel.value);
        if (typeSel.value) p.set("event_type", typeSel.value);
        if (status.value.trim()) p.set("status", status.value.trim());
        const next = `#/dead-letters${p.toString() ? `?${p}` : ""}`;
        if (location.hash === next) ctx.reload();
        else location.hash = next;
      },
    },
    field("Endpoint", endpointSel),
    field("Event type", typeSel),
    field("Status code", status),
    h("button", { type: "submit", id: "apply" }, "Apply")
  );
  const summary = h("div", { class: "dl-summary", role: "status" });
  const list = h("div", { id: "dead-letters" });
  fill(place, h("h1", {}, "Dead letters"), form, summary, list);

  const matches = (d) => {
    if (!filter.status) return true;
    if (filter.status === "none") return d.last_status_code === null || d.last_status_code === undefined;
    return String(d.last_status_code) === filter.status;
  };
  const query = (after) => {
    const p = new URLSearchParams({ limit: "100" });
    if (filter.endpoint_id) p.set("endpoint_id", filter.endpoint_id);
    if (filter.event_type) p.set("event_type", filter.event_type);
    if (after) p.set("after", after);
    return `/v1/dead-letters?${p}`;
  };
  let shown = [];
  let next = null;

  const load = async (more) => {
    const page = await get(query(more ? next : null));
    next = page.next || null;
    const items = (page.dead_letters || []).filter(matches);
    shown = more ? shown.concat(items) : items;
    if (ctx.live) draw();
  };
  ctx.reload = () => load(false).catch((e) => flash(errorText(e), "error"));

  const retryAll = async () => {
    try {
      let n = 0;
      if (!filter.status) {
        const body = {};
        if (filter.endpoint_id) body.endpoint_id = filter.endpoint_id;
        if (filter.event_type) body.event_type = filter.event_type;
        n = (await post("/v1/dead-letters/retry", body)).requeued;
      } else {
        // The API filters by endpoint and type; the status code is matched here, page by page.
        let after = null;
        do {
          const page = await get(query(after));
          for (const d of (page.dead_letters || []).filter(matches)) {
            await post(`/v1/dead-letters/${enc(d.id)}/retry`);
            n++;
          }
          after = page.next;
        } while (after);
      }
      flash(`${n} dead letters requeued.`);
    } catch (e) {
      flash(errorText(e), "error");
    }
    await load(false);
  };

  const draw = () => {
    const canAct = !session.readOnly;
    const rows = shown.map((d) => {
      const cells = [
        h("span", { class: "mono" }, d.id),
        h("a", { href: `#/events/${enc(d.event_id)}` }, d.event_id),
        d.event_type,
        h("a", { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id),
        String(d.attempts),
        d.last_status_code !== null && d.last_status_code !== undefined ? badge(String(d.last_status_code), "bad") : d.last_error || "—",
        time(d.dead_at),
        d.reason,
      ];
      if (canAct) {
        cells.push(
          h(
            "div",
            { class: "row-actions" },
            h(
              "button",
              {
                type: "button",
                class: "retry",
                "data-id": d.id,
                "aria-label": `Retry ${d.id}`,
                onclick: async (ev) => {
                  ev.currentTarget.disabled = true;
                  try {
                    await post(`/v1/dead-letters/${enc(d.id)}/retry`);
                    flash(`${d.id} requeued: it gets a fresh set of attempts.`);
                  } catch (e) {
                    flash(errorText(e), "error");
                  }
                  await load(false);
                },
              },
              "Retry"
            ),
            confirmButton(
              "Delete",
              "Really delete?",
              async () => {
                try {
                  await del(`/v1/dead-letters/${enc(d.id)}`);
                  flash(`${d.id} deleted.`);
                } catch (e) {
                  flash(errorText(e), "error");
                }
                await load(false);
              },
              { class: "delete", "data-id": d.id, "aria-label": `Delete ${d.id}` }
            )
          )
        );
      }
      return cells;
    });
    const headings = ["Dead letter", "Event", "Type", "Endpoint", "Attempts", "Last answer", "Dead since", "Reason"];
    if (canAct) headings.push("Actions");
    fill(
      summary,
      h("p", {}, `${shown.length}${next ? "+" : ""} dead letters match.`),
      canAct && shown.length ? confirmButton(`Retry all that match`, "Retry them all? (click again)", retryAll, { id: "retry-all" }) : null
    );
    fill(
      list,
      table("Dead letters", headings, rows, "No dead letters match."),
      next ? h("button", { type: "button", id: "more", onclick: () => load(true).catch((e) => flash(errorText(e), "error")) }, "Load more") : null
    );
  };
  try {
    await load(false);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;
    fill(list, h("p", { class: "error" }, errorText(e)));
  }
}
