// Small SVG charts (no library): histograms with marks, bars, heat maps, a series with a band,
// and a scatter. Each is an <svg role="img"> with a title for screen readers.

import { fmt } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 480;
const H = 220;
const PAD = { left: 48, right: 12, top: 24, bottom: 34 };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) if (child) node.append(child);
  return node;
}

function text(x, y, content, attrs = {}) {
  const node = svg("text", { x, y, ...attrs });
  node.textContent = content;
  return node;
}

function frame(title, width = W, height = H) {
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    class: "chart",
    "aria-label": title,
  });
  const label = svg("title");
  label.textContent = title;
  root.append(label, text(PAD.left, 16, title, { class: "chart-title" }));
  return root;
}

function scale(domain0, domain1, range0, range1) {
  const span = domain1 - domain0 || 1;
  return (v) => range0 + ((v - domain0) / span) * (range1 - range0);
}

// A histogram ({edges, counts}); `marks` are values drawn as red ticks under the bars (flagged
// rows), `lines` vertical rules ({x, label}) such as fences or thresholds.
export function histogram(title, { edges, counts }, { marks = [], lines = [] } = {}) {
  const root = frame(title);
  if (!edges || edges.length < 2) return root;
  const lo = Math.min(edges[0], ...marks, ...lines.map((l) => l.x));
  const hi = Math.max(edges[edges.length - 1], ...marks, ...lines.map((l) => l.x));
  const x = scale(lo, hi, PAD.left, W - PAD.right);
  const top = Math.max(...counts, 1);
  const y = scale(0, top, H - PAD.bottom, PAD.top);
  counts.forEach((count, i) => {
    const left = x(edges[i]);
    const width = Math.max(1, x(edges[i + 1]) - left - 1);
    const bar = svg("rect", { x: left, y: y(count), width, height: H - PAD.bottom - y(count), class: "bar" });
    const tip = svg("title");
    tip.textContent = `${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${fmt(count)}`;
    bar.append(tip);
    root.append(bar);
  });
  for (const value of marks) {
    root.append(svg("line", { x1: x(value), x2: x(value), y1: H - PAD.bottom + 2, y2: H - PAD.bottom + 12, class: "mark" }));
  }
  for (const line of lines) {
    root.append(svg("line", { x1: x(line.x), x2: x(line.x), y1: PAD.top, y2: H - PAD.bottom, class: "rule" }));
    root.append(text(x(line.x) + 3, PAD.top + 10, line.label, { class: "rule-label" }));
  }
  axes(root, fmt(lo), fmt(hi), fmt(top));
  return root;
}

function axes(root, left, right, top) {
  root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom, class: "axis" }));
  root.append(text(PAD.left, H - 8, left, { class: "tick" }));
  root.append(text(W - PAD.right, H - 8, right, { class: "tick", "text-anchor": "end" }));
  root.append(text(PAD.left - 4, PAD.top + 4, top, { class: "tick", "text-anchor": "end" }));
}

// Equal-width bins over finite values, as the metrics histograms have them.
export function binned(values, bins = 20) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return { edges: [], counts: [] };
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of finite) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === hi) return { edges: [lo, hi + 1], counts: [finite.length] };
  const edges = Array.from({ length: bins + 1 }, (_, i) => lo + ((hi - lo) * i) / bins);
  const counts = new Array(bins).fill(0);
  for (const v of finite) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))] += 1;
  return { edges, counts };
}

export function bars(title, items) {
  const height = PAD.top + 22 * items.length + 10;
  const root = frame(title, W, height);
  const top = Math.max(...items.map((i) => i.value), 1);
  const x = scale(0, top, 140, W - 60);
  items.forEach((item, i) => {
    const y = PAD.top + 6 + i * 22;
    root.append(text(134, y + 13, item.label, { class: "tick", "text-anchor": "end" }));
    root.append(svg("rect", { x: 140, y, width: Math.max(1, x(item.value) - 140), height: 16, class: "bar" }));
    root.append(text(x(item.value) + 4, y + 13, fmt(item.value), { class: "tick" }));
  });
  return root;
}

// rows x cols of numbers; colour from white (min) to the accent (max), or blue-white-red when
// `diverging` (loadings).
export function heatmap(title, rowLabels, colLabels, matrix, { diverging = false } = {}) {
  const cell = 34;
  const left = 130;
  const top = 110;
  const width = Math.max(W, left + cell * colLabels.length + 20);
  const height = top + cell * rowLabels.length + 16;
  const root = frame(title, width, height);
  const flat = matrix.flat().filter((v) => Number.isFinite(v));
  const extent = diverging ? Math.max(...flat.map(Math.abs), 1e-9) : Math.max(...flat, 1e-9);
  const low = diverging ? -extent : Math.min(0, ...flat);
  colLabels.forEach((label, j) => {
    const x = left + j * cell + cell / 2;
    root.append(text(x, top - 6, label, { class: "tick", transform: `rotate(-50 ${x} ${top - 6})` }));
  });
  rowLabels.forEach((label, i) => {
    root.append(text(left - 6, top + i * cell + cell / 2 + 4, label, { class: "tick", "text-anchor": "end" }));
    matrix[i].forEach((value, j) => {
      const rect = svg("rect", {
        x: left + j * cell,
        y: top + i * cell,
        width: cell - 2,
        height: cell - 2,
        fill: colour(value, low, extent, diverging),
        class: "cell",
      });
      const tip = svg("title");
      tip.textContent = `${label} · ${colLabels[j]}: ${fmt(value)}`;
      rect.append(tip);
      root.append(rect);
    });
  });
  return root;
}

function colour(value, low, high, diverging) {
  if (!Number.isFinite(value)) return "#ddd";
  if (diverging) {
    const t = Math.max(-1, Math.min(1, value / high));
    const c = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? `rgb(255,${c},${c})` : `rgb(${c},${c},255)`;
  }
  const t = Math.max(0, Math.min(1, (value - low) / (high - low || 1)));
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(247, 31)},${mix(251, 94)},${mix(255, 168)})`;
}

// Observed values over periods with the expected line and its band (count_model's fitted.csv).
export function series(title, points) {
  const root = frame(title);
  if (!points.length) return root;
  const values = points.flatMap((p) => [p.observed, p.expected, p.lower, p.upper]).filter(Number.isFinite);
  const top = Math.max(...values, 1);
  const x = scale(0, Math.max(points.length - 1, 1), PAD.left, W - PAD.right);
  const y = scale(0, top, H - PAD.bottom, PAD.top);
  const band = points.map((p, i) => `${x(i)},${y(p.upper)}`).concat(
    points.map((p, i) => `${x(points.length - 1 - i)},${y(points[points.length - 1 - i].lower)}`),
  );
  root.append(svg("polygon", { points: band.join(" "), class: "band" }));
  root.append(svg("polyline", { points: points.map((p, i) => `${x(i)},${y(p.expected)}`).join(" "), class: "expected" }));
  root.append(svg("polyline", { points: points.map((p, i) => `${x(i)},${y(p.observed)}`).join(" "), class: "observed" }));
  points.forEach((p, i) => {
    if (p.observed > p.upper) root.append(svg("circle", { cx: x(i), cy: y(p.observed), r: 3, class: "flag" }));
  });
  axes(root, points[0].label, points[points.length - 1].label, fmt(top));
  return root;
}

export function scatter(title, points) {
  const root = frame(title);
  if (!points.length) return root;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const x = scale(Math.min(...xs), Math.max(...xs), PAD.left + 10, W - PAD.right - 40);
  const y = scale(Math.min(...ys), Math.max(...ys), H - PAD.bottom, PAD.top + 10);
  for (const p of points) {
    root.append(svg("circle", { cx: x(p.x), cy: y(p.y), r: 4, class: "dot" }));
    root.append(text(x(p.x) + 6, y(p.y) + 4, p.label, { class: "tick" }));
  }
  return root;
}
