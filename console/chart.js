// Charts of an endpoint's hourly stats, drawn as inline SVG from numbers (no library, no HTML
// strings): attempts per hour, success rate per hour, and p50/p95 latency.

import { h, svg } from "./dom.js";

const W = 600;
const H = 170;
const PAD = { left: 46, right: 10, top: 12, bottom: 26 };

/** A frame with y grid lines and x labels every 6 hours; returns {root, x, y, band}. */
function frame(label, buckets, yMax, yFormat) {
  const n = Math.max(buckets.length, 1);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const band = plotW / n;
  const x = (i) => PAD.left + i * band;
  const y = (v) => PAD.top + plotH - (yMax > 0 ? (v / yMax) * plotH : 0);
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "none",
  });
  root.append(svg("title", {}, label));
  for (const frac of [0, 0.5, 1]) {
    const v = yMax * frac;
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    const text = svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
    text.textContent = yFormat(v);
    root.append(text);
  }
  buckets.forEach((b, i) => {
    const d = new Date(b.start);
    if (i % 6 !== 0 || Number.isNaN(d.getTime())) return;
    const text = svg("text", { x: x(i) + band / 2, y: H - 8, class: "axis", "text-anchor": "middle" });
    text.textContent = `${String(d.getHours()).padStart(2, "0")}:00`;
    root.append(text);
  });
  return { root, x, y, band };
}

/** Attempts per hour, succeeded and failed stacked. */
export function rateChart(buckets) {
  const totals = buckets.map((b) => (b.succeeded || 0) + (b.failed || 0));
  const max = niceMax(Math.max(0, ...totals));
  const sum = totals.reduce((a, b) => a + b, 0);
  const f = frame(`Attempts per hour over the window: ${sum} in all`, buckets, max, (v) => String(Math.round(v)));
  buckets.forEach((b, i) => {
    const ok = b.succeeded || 0;
    const bad = b.failed || 0;
    const w = Math.max(f.band - 2, 1);
    if (ok) f.root.append(bar(f.x(i) + 1, f.y(ok), w, f.y(0) - f.y(ok), "ok", `${ok} succeeded`, b.start));
    if (bad) f.root.append(bar(f.x(i) + 1, f.y(ok + bad), w, f.y(ok) - f.y(ok + bad), "bad", `${bad} failed`, b.start));
  });
  return f.root;
}

/** Share of attempts that succeeded, per hour (hours without attempts left empty). */
export function successChart(buckets) {
  const f = frame("Success rate per hour, in percent", buckets, 100, (v) => `${Math.round(v)}%`);
  buckets.forEach((b, i) => {
    const all = (b.succeeded || 0) + (b.failed || 0);
    if (!all) return;
    const rate = (100 * (b.succeeded || 0)) / all;
    const w = Math.max(f.band - 2, 1);
    const kind = rate >= 99 ? "ok" : rate >= 90 ? "warn" : "bad";
    f.root.append(bar(f.x(i) + 1, f.y(rate), w, Math.max(f.y(0) - f.y(rate), 1), kind, `${rate.toFixed(1)}% of ${all}`, b.start));
  });
  return f.root;
}

/** p50 and p95 latency per hour, as two lines broken where an hour had no attempt. */
export function latencyChart(buckets) {
  const values = buckets.flatMap((b) => [b.p50_ms || 0, b.p95_ms || 0]);
  const max = niceMax(Math.max(0, ...values));
  const f = frame("Latency per hour: p50 and p95, in milliseconds", buckets, max, (v) => `${Math.round(v)} ms`);
  for (const [key, kind] of [
    ["p95_ms", "p95"],
    ["p50_ms", "p50"],
  ]) {
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [px, py] = points[0].split(",");
        f.root.append(svg("circle", { cx: px, cy: py, r: 2.5, class: `dot ${kind}` }));
      } else if (points.length > 1) {
        f.root.append(svg("polyline", { points: points.join(" "), class: `line ${kind}` }));
      }
      points = [];
    };
    buckets.forEach((b, i) => {
      const attempts = (b.succeeded || 0) + (b.failed || 0);
      if (!attempts) return flush();
      points.push(`${(f.x(i) + f.band / 2).toFixed(1)},${f.y(b[key] || 0).toFixed(1)}`);
    });
    flush();
  }
  return f.root;
}

function bar(x, y, w, hgt, kind, label, start) {
  const rect = svg("rect", { x: x.toFixed(1), y: y.toFixed(1), width: w.toFixed(1), height: Math.max(hgt, 0).toFixed(1), class: `bar ${kind}` });
  const title = svg("title", {});
  title.textContent = `${new Date(start).toLocaleString()}: ${label}`;
  rect.append(title);
  return rect;
}

/** 0 → 1; else a round number at or above `v` (1, 2, 5 × 10^n). */
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** A legend: coloured keys with their names. */
export function legend(items) {
  return h(
    "ul",
    { class: "legend" },
    items.map(([kind, text]) => h("li", {}, h("span", { class: `key ${kind}`, "aria-hidden": "true" }), text))
  );
}
