// A completed job's results: each step's summary as tables, its files to download, and plots
// where a picture says more (distributions, flagged values, series, heat maps, loadings).

import { blob, download, text } from "./api.js";
import { bars, binned, heatmap, histogram, scatter, series } from "./charts.js";
import { bytes, el, fmt, table } from "./dom.js";

const MAX_FETCH_BYTES = 20 * 1024 * 1024; // artifacts read in the page to draw them

export function renderResults(job, result) {
  const byName = new Map(result.artifacts.map((a) => [a.name, a]));
  const metrics = result.steps.find((s) => s.processor === "metrics");
  const sections = result.steps.map((step, index) =>
    stepSection(job, step, index, byName, metrics ? metrics.summary : null),
  );
  const files = result.artifacts.length
    ? table(
        ["file", "type", "size", ""],
        result.artifacts.map((a) => [
          a.name,
          a.content_type,
          bytes(a.size_bytes),
          el("button", { type: "button", onclick: () => download(a.url, a.name) }, "Download"),
        ]),
      )
    : el("p", {}, "No files.");
  return el("div", { class: "results" }, el("h2", {}, "Results"), ...sections, el("h3", {}, "Files"), files);
}

function stepSection(job, step, index, artifacts, metrics) {
  const plots = el("div", { class: "plots" });
  const section = el(
    "section",
    { class: "step", "aria-label": `step ${index + 1}: ${step.processor}` },
    el("h3", {}, `${index + 1}. ${step.processor}`),
    plots,
    summaryTables(step.summary),
  );
  const params = (job.steps[index] || {}).params || {};
  const draw = PLOTS[step.processor];
  if (draw) {
    Promise.resolve(draw(step.summary, { plots, artifacts, metrics, params, index, job })).catch((error) =>
      plots.append(el("p", { class: "error" }, `Could not draw: ${error.message}`)),
    );
  }
  return section;
}

// Scalars as one key/value table; a dict of dicts (per column) as a table with a row each.
function summaryTables(summary) {
  const scalars = [];
  const nested = [];
  for (const [key, value] of Object.entries(summary || {})) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) nested.push([key, value]);
    else scalars.push([key, Array.isArray(value) ? value.map(fmt).join(", ") : fmt(value)]);
  }
  const out = [];
  if (scalars.length) out.push(table(["", "value"], scalars));
  for (const [key, value] of nested) {
    const rows = Object.entries(value);
    if (rows.every(([, v]) => v && typeof v === "object" && !Array.isArray(v))) {
      const columns = [...new Set(rows.flatMap(([, v]) => Object.keys(v)))].filter(
        (c) => !["histogram", "top_values"].includes(c),
      );
      out.push(table([key, ...columns], rows.map(([name, v]) => [name, ...columns.map((c) => fmt(v[c]))])));
    } else {
      out.push(table([key, "value"], rows.map(([name, v]) => [name, fmt(v)])));
    }
  }
  return el("details", {}, el("summary", {}, "Summary"), ...out);
}

function parseCsv(content) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < content.length; i += 1) {
    const c = content[i];
    if (quoted) {
      if (c === '"' && content[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && content[i + 1] === "\n") i += 1;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field || row.length) {
    row.push(field);
    rows.push(row);
  }
  const [header = [], ...body] = rows;
  return body.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i]])));
}

async function readCsv(artifact) {
  if (!artifact || artifact.size_bytes > MAX_FETCH_BYTES) return null;
  return parseCsv(await text(artifact.url));
}

function stepArtifact(artifacts, base, index, job) {
  // The n-th step of a processor writes base-n (anomalies-2.csv); the first writes base.
  const same = job.steps.slice(0, index).filter((s) => s.processor === job.steps[index].processor).length;
  const [stem, ext] = base.split(/\.(.*)/s);
  return artifacts.get(same ? `${stem}-${same + 1}.${ext}` : base);
}

const PLOTS = {
  metrics(summary, { plots }) {
    for (const [name, column] of Object.entries(summary.columns || {})) {
      if (column.histogram && column.histogram.edges && column.histogram.edges.length) {
        plots.append(histogram(`${name}: distribution`, column.histogram));
      } else if (column.top_values && column.top_values.length) {
        const items = column.top_values.slice(0, 10).map((t) => ({ label: String(t.value), value: t.count }));
        plots.append(bars(`${name}: top values`, items));
      }
    }
  },

  async anomalies(summary, { plots, artifacts, metrics, index, job }) {
    const flagged = (await readCsv(stepArtifact(artifacts, "anomalies.csv", index, job))) || [];
    const t = summary.threshold;
    for (const [name, column] of Object.entries(summary.columns || {})) {
      const marks = flagged.filter((r) => r.column === name).map((r) => Number(r.value)).filter(Number.isFinite);
      const lines = [];
      if (summary.method === "zscore" && Number.isFinite(column.mean) && Number.isFinite(column.std)) {
        lines.push({ x: column.mean - t * column.std, label: `-${t}σ` }, { x: column.mean + t * column.std, label: `+${t}σ` });
      }
      if (summary.method === "iqr" && Number.isFinite(column.q1) && Number.isFinite(column.q3)) {
        const iqr = column.q3 - column.q1;
        lines.push({ x: column.q1 - t * iqr, label: "lower fence" }, { x: column.q3 + t * iqr, label: "upper fence" });
      }
      const profile = metrics && metrics.columns && metrics.columns[name];
      const shape = profile && profile.histogram ? profile.histogram : binned(marks, 10);
      plots.append(histogram(`${name}: ${column.count ?? marks.length} flagged (red)`, shape, { marks, lines }));
    }
  },

  async normalize(summary, { plots, artifacts, index, job }) {
    const artifact = stepArtifact(artifacts, "normalized.csv", index, job);
    const rows = await readCsv(artifact);
    if (!rows) {
      plots.append(el("p", {}, "Plots need the CSV output of at most 20 MiB; download the file instead."));
      return;
    }
    for (const [name, params] of Object.entries(summary.scaled || {})) {
      const scaled = rows.map((r) => (r[name] === "" ? NaN : Number(r[name])));
      const original = scaled.map((n) => unscale(n, params));
      const pair = el("div", { class: "pair" });
      if (original.some(Number.isFinite)) pair.append(histogram(`${name}: original`, binned(original)));
      pair.append(histogram(`${name}: ${summary.scale_method}`, binned(scaled)));
      plots.append(pair);
    }
  },

  async count_anomalies(summary, { plots, artifacts }) {
    for (const name of summary.plots || []) {
      const artifact = artifacts.get(name);
      if (!artifact) continue;
      const url = URL.createObjectURL(await blob(artifact.url));
      plots.append(el("img", { src: url, alt: `count series ${name} with its baseline band and flagged periods`, class: "plot" }));
    }
  },

  async count_model(summary, { plots, artifacts, index, job }) {
    const rows = await readCsv(stepArtifact(artifacts, "fitted.csv", index, job));
    if (rows && rows.length) {
      const points = rows.slice(-120).map((r) => ({
        label: r.period.slice(0, 10),
        observed: Number(r.observed),
        expected: Number(r.expected),
        lower: Number(r.lower),
        upper: Number(r.upper),
      }));
      plots.append(series("observed (line), expected and its 95% band", points));
    }
    const coefficients = (summary.coefficients || []).filter((c) => c.name !== "const" && c.name !== "Intercept");
    if (coefficients.length) {
      plots.append(bars("incidence-rate ratios", coefficients.slice(0, 20).map((c) => ({ label: c.name, value: c.irr }))));
    }
  },

  latent_classes(summary, { plots }) {
    const classes = summary.item_probabilities || [];
    if (!classes.length) return;
    const columns = [];
    for (const [item, value] of Object.entries(classes[0])) {
      if (value && typeof value === "object") for (const level of Object.keys(value)) columns.push([item, level]);
      else columns.push([item, null]);
    }
    const matrix = classes.map((probabilities) =>
      columns.map(([item, level]) => (level === null ? probabilities[item] : probabilities[item][level])),
    );
    const labels = classes.map((_, i) => `class ${i + 1} (${fmt((summary.class_sizes || [])[i])})`);
    plots.append(
      heatmap("item-response probability per class", labels, columns.map(([i, l]) => (l === null ? i : `${i}=${l}`)), matrix),
    );
  },

  factor_analysis(summary, { plots }) {
    const loadings = Object.entries(summary.loadings || {});
    if (!loadings.length) return;
    const factors = loadings[0][1].map((_, j) => `factor ${j + 1}`);
    plots.append(heatmap("loadings", loadings.map(([name]) => name), factors, loadings.map(([, row]) => row), { diverging: true }));
  },

  nmf(summary, { plots }) {
    const components = summary.components || [];
    if (!components.length) return;
    const names = Object.keys(components[0]);
    plots.append(heatmap("components", components.map((_, i) => `component ${i + 1}`), names, components.map((c) => names.map((n) => c[n]))));
  },

  correspondence(summary, { plots }) {
    const points = Object.entries(summary.column_coordinates || {})
      .filter(([, xy]) => xy.length >= 2)
      .map(([label, xy]) => ({ label, x: xy[0], y: xy[1] }));
    if (points.length) plots.append(scatter("categories on the first two components", points));
  },
};

function unscale(n, params) {
  if (!Number.isFinite(n)) return NaN;
  if (Number.isFinite(params.min) && Number.isFinite(params.max)) return n * (params.max - params.min) + params.min;
  if (Number.isFinite(params.mean) && Number.isFinite(params.std)) return n * params.std + params.mean;
  if (Number.isFinite(params.median) && Number.isFinite(params.iqr)) return n * params.iqr + params.median;
  return NaN;
}
