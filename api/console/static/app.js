// The console: datasets (upload, schema, profile, preview, failed rows) and jobs (a form per
// processor from its JSON Schema, live progress from the event stream, results with plots).

import { ApiError, apiKey, download, followEvents, request, setApiKey, upload } from "./api.js";
import { bars, histogram } from "./charts.js";
import { badge, bytes, el, fmt, table, when } from "./dom.js";
import { paramsForm } from "./forms.js";
import { renderResults } from "./results.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const FINISHED = new Set(["completed", "failed", "cancelled"]);
let leaving = new AbortController(); // aborted when the page changes: streams and polls stop

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function say(message, kind = "info") {
  notice.replaceChildren(el("p", { class: kind }, message));
  if (kind === "info") setTimeout(() => notice.replaceChildren(), 5000);
}

function fail(error) {
  if (error instanceof ApiError && error.status === 401) {
    signinNeeded();
    return;
  }
  const details = error.details ? ` (${JSON.stringify(error.details)})` : "";
  say(`${error.message}${details}`, "error");
}

function signinNeeded() {
  document.getElementById("signin").hidden = false;
  document.getElementById("signout").hidden = true;
  say("This server needs an API key: sign in above.", "error");
  document.getElementById("api-key").focus();
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function progressBar(label) {
  const bar = el("progress", { max: 1, value: 0, "aria-label": label });
  const caption = el("span", { class: "caption" });
  return {
    element: el("div", { class: "progress" }, bar, caption),
    set(value, message) {
      if (value === null) bar.removeAttribute("value");
      else bar.value = value;
      caption.textContent = message;
    },
  };
}

// --- Datasets ---------------------------------------------------------------------------------

async function datasetsView(signal) {
  const list = el("div", {}, el("p", {}, "Loading…"));
  show(el("h1", {}, "Datasets"), uploadCard(signal), el("h2", {}, "All datasets"), list);
  let cursor = null;
  const rows = [];
  const more = el("button", { type: "button", class: "secondary" }, "Load more");
  async function load() {
    const query = new URLSearchParams({ limit: "50", ...(cursor ? { cursor } : {}) });
    const page = await request(`/api/v1/datasets?${query}`, { signal });
    rows.push(...page.items);
    cursor = page.next_cursor;
    list.replaceChildren(
      rows.length
        ? table(
            ["name", "status", "rows", "failed rows", "size", "uploaded"],
            rows.map((d) => [
              el("a", { href: `#/datasets/${d.id}` }, d.name),
              badge(d.status),
              fmt(d.row_count),
              fmt(d.failed_row_count),
              bytes(d.size_bytes),
              when(d.created_at),
            ]),
          )
        : el("p", {}, "No datasets yet: upload one above."),
      cursor ? more : "",
    );
  }
  more.addEventListener("click", () => load().catch(fail));
  await load();
}

function uploadCard(signal) {
  const input = el("input", { type: "file", id: "file", accept: ".csv,.json,.ndjson,.jsonl,.parquet,.gz" });
  const name = el("input", { type: "text", id: "dataset-name", placeholder: "(the file's name)" });
  const zone = el(
    "label",
    { class: "dropzone", for: "file" },
    el("strong", {}, "Drop a CSV, JSON or Parquet file here"),
    " or choose one",
  );
  const progress = progressBar("upload");
  progress.element.hidden = true;
  const status = el("p", { class: "upload-status", role: "status" });
  const button = el("button", { type: "submit" }, "Upload");
  const form = el(
    "form",
    { class: "card upload" },
    zone,
    input,
    el("div", { class: "field" }, el("label", { for: "dataset-name" }, "Name"), name),
    button,
    progress.element,
    status,
  );
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      zone.querySelector("strong").textContent = event.dataTransfer.files[0].name;
    }
  });
  input.addEventListener("change", () => {
    if (input.files.length) zone.querySelector("strong").textContent = input.files[0].name;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      say("Choose a file first.", "error");
      return;
    }
    button.disabled = true;
    progress.element.hidden = false;
    try {
      const dataset = await upload(file, name.value.trim(), (fraction) =>
        progress.set(fraction, `sending ${Math.round(fraction * 100)}% of ${bytes(file.size)}`),
      );
      progress.set(null, "validating…");
      const done = await waitForDataset(dataset.id, signal, (d) => progress.set(null, `${d.status}…`));
      progress.set(1, done.status === "ready" ? `ready: ${fmt(done.row_count)} rows` : `failed: ${done.error}`);
      status.replaceChildren(el("a", { href: `#/datasets/${done.id}` }, `Open ${done.name}`));
    } catch (error) {
      progress.set(0, "upload failed");
      fail(error);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

async function waitForDataset(id, signal, onChange) {
  for (;;) {
    const dataset = await request(`/api/v1/datasets/${id}`, { signal });
    if (dataset.status === "ready" || dataset.status === "failed") return dataset;
    onChange(dataset);
    await sleep(500, signal);
    if (signal.aborted) return dataset;
  }
}

async function datasetView(id, signal) {
  const dataset = await request(`/api/v1/datasets/${id}`, { signal });
  const columns = dataset.columns || [];
  const header = el(
    "div",
    { class: "card" },
    el("h1", {}, dataset.name),
    el(
      "p",
      {},
      badge(dataset.status),
      ` ${fmt(dataset.row_count)} rows · ${fmt(dataset.failed_row_count)} failed · ${bytes(dataset.size_bytes)} · ${dataset.format}`,
    ),
    dataset.error ? el("p", { class: "error" }, dataset.error) : "",
    el(
      "div",
      { class: "actions" },
      dataset.status === "ready" ? el("a", { class: "button", href: `#/jobs/new?dataset=${id}` }, "Run a job") : "",
      el("button", { type: "button", class: "secondary", onclick: () => download(dataset.links.content, dataset.name).catch(fail) }, "Download original"),
      el("button", { type: "button", class: "danger", onclick: () => removeDataset(dataset) }, "Delete"),
    ),
  );
  const schema = table(
    ["column", "type", "nulls"],
    columns.map((c) => [c.name, c.type, fmt(c.null_count)]),
  );
  const profile = el("div", { class: "plots" });
  const preview = el("div", {}, el("p", {}, "Loading…"));
  const failed = el("div", {});
  show(
    header,
    el("h2", {}, "Schema"),
    schema,
    el("h2", {}, "Profile"),
    profile,
    el("h2", {}, "Preview"),
    preview,
    el("h2", {}, `Failed rows (${fmt(dataset.failed_row_count)})`),
    failed,
  );
  if (dataset.status === "ready") {
    profileOf(dataset, profile, signal).catch(fail);
    request(dataset.links.preview, { signal })
      .then((page) =>
        preview.replaceChildren(
          table(
            page.columns.map((c) => c.name),
            page.rows.map((row) => page.columns.map((c) => fmt(row[c.name]))),
          ),
        ),
      )
      .catch(fail);
  } else {
    preview.replaceChildren(el("p", {}, "The preview appears once the dataset is ready."));
  }
  failedRows(dataset, failed, signal).catch(fail);
}

// Histograms and top values from the dataset's latest completed metrics run, or a button to
// start one.
async function profileOf(dataset, holder, signal) {
  const query = new URLSearchParams({ dataset_id: dataset.id, status: "completed", limit: "20" });
  const jobs = await request(`/api/v1/jobs?${query}`, { signal });
  for (const job of jobs.items) {
    const index = job.steps.findIndex((s) => s.processor === "metrics");
    if (index < 0) continue;
    const result = await request(`/api/v1/jobs/${job.id}/result`, { signal });
    const summary = result.steps[index].summary;
    for (const [name, column] of Object.entries(summary.columns || {})) {
      if (column.histogram && column.histogram.edges && column.histogram.edges.length) {
        holder.append(histogram(`${name}: distribution`, column.histogram));
      } else if (column.top_values && column.top_values.length) {
        holder.append(bars(`${name}: top values`, column.top_values.slice(0, 10).map((t) => ({ label: String(t.value), value: t.count }))));
      }
    }
    holder.append(el("p", { class: "help" }, "From ", el("a", { href: `#/jobs/${job.id}` }, "a metrics run"), ` of ${when(job.finished_at)}.`));
    return;
  }
  const button = el("button", { type: "button" }, "Profile it (run metrics)");
  button.addEventListener("click", async () => {
    try {
      const job = await request("/api/v1/jobs", {
        method: "POST",
        json: { dataset_id: dataset.id, steps: [{ processor: "metrics" }], name: "profile" },
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      fail(error);
    }
  });
  holder.append(el("p", {}, "No profile yet. "), button);
}

async function failedRows(dataset, holder, signal) {
  let cursor = null;
  const rows = [];
  const more = el("button", { type: "button", class: "secondary" }, "Next rows");
  async function load() {
    const query = new URLSearchParams({ limit: "50", ...(cursor ? { cursor } : {}) });
    const page = await request(`${dataset.links.failed_rows}?${query}`, { signal });
    rows.push(...page.items);
    cursor = page.next_cursor;
    holder.replaceChildren(
      rows.length ? table(["line", "raw text", "reason"], rows.map((r) => [fmt(r.line_number), r.raw_text, r.reason])) : el("p", {}, "None."),
      cursor ? more : "",
    );
  }
  more.addEventListener("click", () => load().catch(fail));
  await load();
}

async function removeDataset(dataset) {
  if (!confirm(`Delete ${dataset.name} and its stored files?`)) return;
  try {
    await request(`/api/v1/datasets/${dataset.id}`, { method: "DELETE" });
    say(`Deleted ${dataset.name}.`);
    location.hash = "#/datasets";
  } catch (error) {
    fail(error);
  }
}

// --- Jobs -------------------------------------------------------------------------------------

async function jobsView(signal) {
  const page = await request("/api/v1/jobs?limit=100", { signal });
  show(
    el("h1", {}, "Jobs"),
    el("p", {}, el("a", { class: "button", href: "#/jobs/new" }, "New job")),
    page.items.length
      ? table(
          ["job", "status", "progress", "steps", "submitted"],
          page.items.map((j) => [
            el("a", { href: `#/jobs/${j.id}` }, j.name || j.id.slice(-12)),
            badge(j.status),
            `${Math.round(j.progress * 100)}%`,
            j.steps.map((s) => s.processor).join(", "),
            when(j.created_at),
          ]),
        )
      : el("p", {}, "No jobs yet."),
  );
}

async function newJobView(params, signal) {
  const [processors, datasets] = await Promise.all([
    request("/api/v1/processors", { signal }),
    request("/api/v1/datasets?status=ready&limit=200", { signal }),
  ]);
  const choose = el("select", { id: "job-dataset", required: true });
  for (const d of datasets.items) choose.append(el("option", { value: d.id }, d.name));
  if (params.get("dataset")) choose.value = params.get("dataset");
  const name = el("input", { type: "text", id: "job-name", placeholder: "(optional)" });
  const steps = el("ol", { class: "steps" });
  const stepForms = [];
  const pick = el("select", { id: "add-processor" });
  for (const p of processors) pick.append(el("option", { value: p.name }, p.name));
  const add = el("button", { type: "button", class: "secondary" }, "Add step");
  const columnsOf = () => (datasets.items.find((d) => d.id === choose.value) || {}).columns || [];

  function addStep(processorName) {
    const processor = processors.find((p) => p.name === processorName);
    const form = paramsForm(processor.params_schema, columnsOf());
    const entry = { processor: processorName, form };
    const remove = el("button", { type: "button", class: "link", "aria-label": `remove step ${processorName}` }, "Remove");
    const item = el(
      "li",
      { class: "card step-form" },
      el("div", { class: "step-head" }, el("h3", {}, processorName), remove),
      el("p", { class: "help" }, processor.description),
      form.element,
    );
    remove.addEventListener("click", () => {
      stepForms.splice(stepForms.indexOf(entry), 1);
      item.remove();
    });
    stepForms.push(entry);
    steps.append(item);
  }
  add.addEventListener("click", () => addStep(pick.value));
  choose.addEventListener("change", () => {
    // Column pickers list the chosen dataset's columns: rebuild the steps for it.
    const names = stepForms.map((s) => s.processor);
    stepForms.length = 0;
    steps.replaceChildren();
    names.forEach(addStep);
  });
  const submit = el("button", { type: "submit" }, "Run");
  const form = el(
    "form",
    { class: "new-job" },
    el("div", { class: "field" }, el("label", { for: "job-dataset" }, "Dataset"), choose),
    el("div", { class: "field" }, el("label", { for: "job-name" }, "Name"), name),
    el("h2", {}, "Steps"),
    steps,
    el("div", { class: "field inline" }, el("label", { for: "add-processor" }, "Processor"), pick, add),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!stepForms.length) {
      say("Add at least one step.", "error");
      return;
    }
    try {
      const body = {
        dataset_id: choose.value,
        steps: stepForms.map((s) => ({ processor: s.processor, params: s.form.read() })),
      };
      if (name.value.trim()) body.name = name.value.trim();
      submit.disabled = true;
      const job = await request("/api/v1/jobs", { method: "POST", json: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      fail(error);
    } finally {
      submit.disabled = false;
    }
  });
  show(el("h1", {}, "New job"), datasets.items.length ? form : el("p", {}, "No ready dataset yet: upload one first."));
}

async function jobView(id, signal) {
  let job = await request(`/api/v1/jobs/${id}`, { signal });
  const state = el("p", { class: "job-state" });
  const progress = progressBar("job progress");
  const cancel = el("button", { type: "button", class: "danger" }, "Cancel");
  const history = el("ol", { class: "events", "aria-label": "event history" });
  const results = el("div", {});
  const error = el("div", {});
  cancel.addEventListener("click", async () => {
    try {
      job = await request(`/api/v1/jobs/${id}/cancel`, { method: "POST" });
      update();
    } catch (e) {
      fail(e);
    }
  });
  function update(message, eta) {
    state.replaceChildren(badge(job.status), ` attempt ${job.attempts} · ${job.steps.map((s) => s.processor).join(" → ")}`);
    const left = eta === null || eta === undefined ? "" : ` · about ${fmt(Math.round(eta))} s left`;
    progress.set(job.progress, `${Math.round(job.progress * 100)}% ${message || job.message || ""}${left}`);
    cancel.hidden = FINISHED.has(job.status);
    if (job.error) {
      error.replaceChildren(el("p", { class: "error" }, `${job.error.processor ? `${job.error.processor}: ` : ""}${job.error.message}`));
    }
  }
  show(
    el("h1", {}, job.name || `Job ${id.slice(-12)}`),
    el("p", {}, "Dataset ", el("a", { href: `#/datasets/${job.dataset_id}` }, job.dataset_id || "(deleted)")),
    state,
    progress.element,
    cancel,
    error,
    results,
    el("details", { open: !FINISHED.has(job.status) }, el("summary", {}, "Event history"), history),
  );
  update();
  await followEvents(
    id,
    (type, data) => {
      const text = data.message || data.processor || data.error?.message || "";
      if (type !== "progress") history.append(el("li", {}, el("time", {}, when(data.created_at)), ` ${type} `, text));
      if (type === "progress") {
        job.progress = data.progress;
        update(data.message, data.eta_seconds);
      } else if (FINISHED.has(type) || type === "started" || type === "retried" || type === "requeued") {
        job.status = type === "retried" || type === "requeued" ? "queued" : type === "started" ? "running" : type;
        update();
      }
    },
    signal,
  );
  if (signal.aborted) return;
  job = await request(`/api/v1/jobs/${id}`, { signal });
  update();
  if (job.status === "completed") {
    const result = await request(`/api/v1/jobs/${id}/result`, { signal });
    results.replaceChildren(renderResults(job, result));
  }
}

// --- Routing and sign-in ----------------------------------------------------------------------

async function route() {
  leaving.abort();
  leaving = new AbortController();
  const signal = leaving.signal;
  const [path, query] = (location.hash.slice(1) || "/datasets").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.toggleAttribute("aria-current", link.dataset.nav === parts[0]);
  }
  try {
    if (parts[0] === "jobs" && parts[1] === "new") await newJobView(params, signal);
    else if (parts[0] === "jobs" && parts[1]) await jobView(parts[1], signal);
    else if (parts[0] === "jobs") await jobsView(signal);
    else if (parts[0] === "datasets" && parts[1]) await datasetView(parts[1], signal);
    else await datasetsView(signal);
  } catch (error) {
    if (!signal.aborted) fail(error);
  }
}

document.getElementById("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(document.getElementById("api-key").value.trim());
  document.getElementById("signin").hidden = true;
  document.getElementById("signout").hidden = false;
  notice.replaceChildren();
  route();
});
document.getElementById("signout").addEventListener("click", () => {
  setApiKey(null);
  location.reload();
});
document.getElementById("signout").hidden = !apiKey();
window.addEventListener("hashchange", route);
route();
