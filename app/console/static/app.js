/* TuneForge console: a small single-page app on the public /v1 API. Plain JavaScript, no build step.
 * The API key lives in sessionStorage (this tab only), is sent as a Bearer header, never in a URL or cookie.
 * Every figure drawn comes from an API response. API data is inserted as text, never as HTML. */
"use strict";

const KEY = "tuneforge.apiKey";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const STATUSES = ["validating_files", "queued", "running", "pausing", "paused", "cancelling",
                  "succeeded", "failed", "cancelled"];
let timers = [];        // polling of the current page, cleared on navigation
let pageToken = 0;      // increments on navigation; stale async work checks it

/* ---------- DOM helpers ---------- */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const $ = (sel, root = document) => root.querySelector(sel);
function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits);
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
function badge(status) { return h("span", { class: `badge ${status}`, "data-status": status }, status); }
function tableOf(columns, rows, attrs) {
  return h("div", { class: "scroll" }, h("table", attrs || {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows)));
}
function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v instanceof Node ? v : fmtNum(v))]));
}

/* ---------- errors ---------- */
function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}
function guard(fn) {
  return async (...args) => {
    try { showError(""); await fn(...args); } catch (err) { showError(err.message || String(err)); }
  };
}

/* ---------- the API ---------- */
function apiKey() { return sessionStorage.getItem(KEY) || ""; }
class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    const text = e.message || (typeof body === "string" ? body : `HTTP ${status}`);
    super(`${text}${e.code ? ` (${e.code})` : ""} [HTTP ${status}]`);
    this.status = status; this.code = e.code; this.param = e.param;
  }
}
async function api(method, path, body) {
  if (!apiKey()) throw new Error("Enter an API key first (top right). Create one with `tuneforge keys create`.");
  const init = { method, headers: { Authorization: `Bearer ${apiKey()}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try { response = await fetch(`/v1${path}`, init); } catch (err) {
    throw new Error(`Cannot reach the server: ${err.message}`);
  }
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}
function uploadFile(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      let data = xhr.responseText;
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* keep text */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data); else reject(new ApiError(xhr.status, data));
    });
    xhr.addEventListener("error", () => reject(new Error("Upload failed: the server could not be reached")));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
async function allEvents(jobId) {
  const events = [];
  let after = null;
  for (let i = 0; i < 200; i++) {
    const page = await api("GET", `/fine_tuning/jobs/${jobId}/events?limit=100${after ? `&after=${after}` : ""}`);
    events.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return events.reverse(); // oldest first
}
async function newEvents(jobId, knownId) {
  // newest first until the newest event already seen
  const fresh = [];
  let after = null;
  for (let i = 0; i < 200; i++) {
    const page = await api("GET", `/fine_tuning/jobs/${jobId}/events?limit=100${after ? `&after=${after}` : ""}`);
    for (const ev of page.data) {
      if (ev.id === knownId) return fresh.reverse();
      fresh.push(ev);
    }
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return fresh.reverse();
}
async function downloadFile(fileId, filename) {
  await downloadFrom(`/v1/files/${fileId}/content`, filename || fileId);
}
function attachmentName(response, fallback) {
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : fallback;
}
async function downloadFrom(path, fallbackName) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (!response.ok) {
    let data = null; try { data = await response.json(); } catch (_) { /* empty */ }
    throw new ApiError(response.status, data);
  }
  const url = URL.createObjectURL(await response.blob());
  const a = h("a", { href: url, download: attachmentName(response, fallbackName) });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
async function downloadModel(modelId, format, button) {
  // The archive is built (a merge can take a while) before the first byte; say so on the button meanwhile.
  const label = button.textContent;
  button.disabled = true; button.textContent = "Preparing…";
  try {
    const query = format ? `?format=${format}` : "";
    await downloadFrom(`/v1/models/${encodeURIComponent(modelId)}/content${query}`, `${modelId.replace(/[:/]/g, "_")}.tar`);
  } finally { button.disabled = false; button.textContent = label; }
}

/* ---------- routing ---------- */
function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "files";
  const [pathPart, queryPart] = hash.split("?");
  const parts = pathPart.split("/").map(decodeURIComponent);
  return { page: parts[0], arg: parts.slice(1).join("/"), query: new URLSearchParams(queryPart || "") };
}
function render() {
  timers.forEach(clearInterval); timers = [];
  pageToken += 1;
  showError("");
  const { page, arg, query } = route();
  document.querySelectorAll("#nav a[data-page]").forEach((a) => {
    a.classList.toggle("active", a.dataset.page === page || (page === "job" && a.dataset.page === "jobs"));
  });
  updateKeyState();
  const view = $("#view");
  view.replaceChildren();
  if (!apiKey()) {
    view.append(h("div", { class: "card", id: "need-key" },
      h("h1", {}, "Welcome to TuneForge"),
      h("p", {}, "Enter an API key at the top right to see this project's files, jobs and models."),
      h("p", { class: "muted" }, "Create one on the server with: ",
        h("code", {}, "tuneforge keys create --project demo"),
        ". The key stays in this browser tab only (session storage).")));
    return;
  }
  const pages = { files: filesPage, jobs: jobsPage, job: jobPage, playground: playgroundPage, models: modelsPage };
  (pages[page] || filesPage)(view, arg, query, pageToken);
}
function every(ms, fn) { timers.push(setInterval(fn, ms)); }
function current(token) { return token === pageToken; }

/* ---------- key form ---------- */
function updateKeyState() {
  const key = apiKey();
  $("#key-state").textContent = key ? `key …${key.slice(-4)}` : "no key";
  $("#key-forget").hidden = !key;
}
function setupKeyForm() {
  $("#key-form").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const value = $("#key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    $("#key-input").value = "";
    try { await api("GET", "/models"); } catch (err) {
      sessionStorage.removeItem(KEY);
      render();
      throw err;
    }
    render();
  }));
  $("#key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); render(); });
}

/* ---------- Files ---------- */
function filesPage(view, _arg, query, token) {
  const progress = h("progress", { id: "upload-progress", max: "1", value: "0", hidden: true });
  const fileInput = h("input", { type: "file", id: "upload-input", accept: ".jsonl,.json,.txt" });
  const purpose = h("select", { id: "upload-purpose" }, ["fine-tune", "user_data", "assistants", "batch"]
    .map((p) => h("option", { value: p }, p)));
  const status = h("span", { class: "muted", id: "upload-status" });
  const listBox = h("div", { id: "files-list" }, h("p", { class: "muted" }, "Loading…"));
  const reportBox = h("div", { id: "report" });
  const upload = guard(async () => {
    const file = fileInput.files[0];
    if (!file) throw new Error("Choose a JSONL file to upload.");
    progress.hidden = false; progress.value = 0; status.textContent = `uploading ${file.name}…`;
    try {
      const created = await uploadFile(file, purpose.value, (share) => { progress.value = share; });
      progress.value = 1;
      status.textContent = `uploaded ${created.filename} as ${created.id}`;
      fileInput.value = "";
      await loadList();
      if (created.purpose === "fine-tune") await showReport(created.id);
    } finally { setTimeout(() => { progress.hidden = true; }, 800); }
  });
  async function loadList() {
    const page = await api("GET", "/files?limit=1000");
    if (!current(token)) return;
    const rows = page.data.map((f) => h("tr", { "data-id": f.id },
      h("td", { class: "mono" }, f.id), h("td", {}, f.filename), h("td", { class: "num" }, fmtBytes(f.bytes)),
      h("td", {}, f.purpose), h("td", { class: "hide-narrow" }, fmtTime(f.created_at)),
      h("td", {},
        f.purpose === "fine-tune" ? h("button", { class: "report-btn", onclick: guard(() => showReport(f.id)) },
          "Report") : null, " ",
        h("button", { class: "danger delete-btn", onclick: guard(async () => {
          if (!confirm(`Delete ${f.filename} (${f.id})?`)) return;
          await api("DELETE", `/files/${f.id}`);
          reportBox.replaceChildren();
          await loadList();
        }) }, "Delete"))));
    listBox.replaceChildren(rows.length
      ? tableOf(["id", "filename", "size", "purpose", "created", ""], rows, { id: "files-table" })
      : h("p", { class: "muted" }, "No files yet: upload a JSONL dataset above."));
  }
  async function showReport(fileId) {
    reportBox.replaceChildren(h("p", { class: "muted" }, `Checking ${fileId}…`));
    const report = await api("GET", `/files/${fileId}/report`);
    if (!current(token)) return;
    reportBox.replaceChildren(renderReport(report));
    reportBox.scrollIntoView({ block: "nearest" });
  }
  view.append(
    h("h1", {}, "Files"),
    h("div", { class: "card" }, h("h2", {}, "Upload a dataset"),
      h("div", { class: "row" }, h("div", { class: "field" }, h("label", {}, "JSONL file"), fileInput),
        h("div", { class: "field" }, h("label", {}, "purpose"), purpose),
        h("button", { class: "primary", id: "upload-btn", onclick: upload }, "Upload")),
      h("div", { style: null }, progress), status),
    h("div", { class: "card" }, h("h2", {}, "Files of this project"), listBox),
    reportBox);
  guard(loadList)();
  if (query.get("report")) guard(() => showReport(query.get("report")))();
}

function renderReport(r) {
  const tokens = r.tokens || {};
  const per = tokens.tokens || {};
  const stats = r.stats || {};
  const verdict = r.can_train ? h("span", { class: "badge ok", id: "report-verdict" }, "can train")
    : h("span", { class: "badge bad", id: "report-verdict" }, "cannot train");
  const card = h("div", { class: "card", id: "report-card", "data-file": r.id },
    h("h2", {}, `Dataset report: ${r.id} `, verdict),
    r.blocking_error ? h("p", { class: "error", style: null }, `${r.blocking_error.code}: ${r.blocking_error.message}`)
      : null,
    kv([["format", r.format], ["lines", r.n_lines], ["examples", r.n_examples], ["errors", r.n_errors],
        ["duplicates", r.duplicates],
        ["messages per example", stats.messages_max ? `${stats.messages_min}–${stats.messages_max} (mean ${fmtNum(stats.messages_mean, 3)})` : ""],
        ["characters", stats.chars_total ? `${stats.chars_total} total, longest example ${stats.chars_max}` : ""],
        ["assistant messages", stats.assistant_messages], ["examples with tools", stats.examples_with_tools],
        ["tokens per example", per.p50 !== undefined ? `p50 ${per.p50} · p95 ${per.p95} · max ${per.max} · total ${per.total}` : ""],
        ["trainable", tokens.trainable_examples !== undefined ? `${tokens.trainable_examples} examples, ${tokens.trainable_tokens} tokens` : ""],
        ["over max_seq_length", tokens.over_max_seq_length ? tokens.over_max_seq_length.count : ""],
        ["truncated / dropped", tokens.truncated ? `${tokens.truncated.count} / ${(tokens.dropped || {}).count}` : ""],
        ["near duplicates", tokens.near_duplicates ? tokens.near_duplicates.count : ""],
        ["doctor model", tokens.model || ""]]));
  const errors = r.errors || [];
  if (errors.length) {
    card.append(h("h2", {}, `Errors (${r.n_errors})`), tableOf(["line", "code", "message"],
      errors.map((e) => h("tr", { class: "report-error", "data-line": e.line, "data-code": e.code },
        h("td", { class: "num" }, e.line || "file"), h("td", { class: "mono" }, e.code), h("td", {}, e.message))),
      { id: "report-errors" }));
  }
  const counts = Object.entries(r.error_counts || {});
  if (counts.length) card.append(h("p", { class: "muted" }, "by code: ", counts.map(([c, n]) => `${c} ×${n}`).join(", ")));
  const warnings = tokens.warnings || [];
  if (warnings.length) {
    card.append(h("h2", {}, "Warnings"), tableOf(["code", "message"],
      warnings.map((w) => h("tr", {}, h("td", { class: "mono" }, w.code), h("td", {}, w.message)))));
  }
  return card;
}

/* ---------- Jobs ---------- */
function progressOf(job, metrics) {
  if (job.status === "succeeded") return h("span", {}, "done");
  if (!metrics || !metrics.total_steps) return h("span", { class: "muted" }, job.status === "running" ? "starting…" : "");
  const share = Math.min(1, metrics.step / metrics.total_steps);
  const eta = job.estimated_finish && job.status === "running"
    ? ` · ETA ${Math.max(0, Math.round(job.estimated_finish - Date.now() / 1000))}s` : "";
  return h("div", {}, h("div", { class: "bar" }, h("span", { style: null, "data-share": share.toFixed(3) })),
    h("span", { class: "muted" }, `step ${metrics.step}/${metrics.total_steps}${eta}`));
}
function fixBars(root) {
  // CSP forbids inline style attributes set from markup; set widths through the CSSOM instead
  root.querySelectorAll(".bar > span[data-share]").forEach((s) => { s.style.width = `${100 * s.dataset.share}%`; });
}
async function latestMetrics(jobId) {
  const page = await api("GET", `/fine_tuning/jobs/${jobId}/events?limit=20`);
  const ev = page.data.find((e) => e.type === "metrics");
  return ev ? ev.data : null;
}
function jobActions(job, after) {
  const act = (name) => guard(async () => { await api("POST", `/fine_tuning/jobs/${job.id}/${name}`); await after(); });
  const out = [];
  if (["running", "queued"].includes(job.status)) out.push(h("button", { class: "pause-btn", onclick: act("pause") }, "Pause"));
  if (job.status === "paused") out.push(h("button", { class: "resume-btn", onclick: act("resume") }, "Resume"));
  if (!TERMINAL.includes(job.status) && job.status !== "cancelling") {
    out.push(h("button", { class: "danger cancel-btn", onclick: act("cancel") }, "Cancel"));
  }
  return out;
}
function jobsPage(view, _arg, query, token) {
  const statusFilter = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: query.get("status") === s }, s)));
  const metaFilter = h("input", { id: "filter-metadata", placeholder: "metadata key=value", value: query.get("metadata") || "" });
  const listBox = h("div", { id: "jobs-list" }, h("p", { class: "muted" }, "Loading…"));
  const resolvedBox = h("div", { id: "created" });
  async function loadList() {
    let path = "/fine_tuning/jobs?limit=100";
    const meta = metaFilter.value.trim();
    if (meta) {
      const [k, ...rest] = meta.split("=");
      path += `&metadata[${encodeURIComponent(k.trim())}]=${encodeURIComponent(rest.join("=").trim())}`;
    }
    const page = await api("GET", path);
    let jobs = page.data;
    if (statusFilter.value) jobs = jobs.filter((j) => j.status === statusFilter.value);
    const metrics = {};
    await Promise.all(jobs.filter((j) => !TERMINAL.includes(j.status)).slice(0, 20).map(async (j) => {
      metrics[j.id] = await latestMetrics(j.id);
    }));
    if (!current(token)) return;
    const rows = jobs.map((j) => h("tr", { "data-id": j.id, "data-status": j.status },
      h("td", { class: "mono" }, h("a", { href: `#/job/${j.id}` }, j.id)), h("td", {}, badge(j.status)),
      h("td", {}, j.model), h("td", { class: "mono" }, j.fine_tuned_model || (j.error ? j.error.code : "")),
      h("td", {}, progressOf(j, metrics[j.id])),
      h("td", { class: "hide-narrow" }, j.metadata ? Object.entries(j.metadata).map(([k, v]) => `${k}=${v}`).join(" ") : ""),
      h("td", { class: "hide-narrow" }, fmtTime(j.created_at)),
      h("td", {}, jobActions(j, loadList))));
    listBox.replaceChildren(rows.length
      ? tableOf(["job", "status", "base", "model / error", "progress", "metadata", "created", ""], rows, { id: "jobs-table" })
      : h("p", { class: "muted" }, "No jobs match."));
    fixBars(listBox);
  }
  statusFilter.addEventListener("change", guard(loadList));
  metaFilter.addEventListener("change", guard(loadList));
  view.append(h("h1", {}, "Fine-tuning jobs"), createJobForm(resolvedBox, loadList, token), resolvedBox,
    h("div", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "Jobs"), statusFilter, metaFilter,
      h("button", { onclick: guard(loadList) }, "Refresh")), listBox));
  guard(loadList)();
  every(3000, () => { if (document.visibilityState === "visible") loadList().catch((e) => showError(e.message)); });
}

function createJobForm(resolvedBox, after, token) {
  const field = (label, input) => h("div", { class: "field" }, h("label", { for: input.id }, label), input);
  const num = (id, placeholder, step) => h("input", { id, type: "number", placeholder, step: step || "any" });
  const model = h("select", { id: "job-model" });
  const training = h("select", { id: "job-training" });
  const validation = h("select", { id: "job-validation" }, h("option", { value: "" }, "(none)"));
  const method = h("select", { id: "job-method" }, h("option", { value: "supervised" }, "SFT (supervised)"),
    h("option", { value: "dpo" }, "DPO (preference)"));
  const tuning = h("select", { id: "job-tuning" }, h("option", { value: "lora" }, "LoRA"), h("option", { value: "full" }, "full"));
  const inputs = {
    n_epochs: num("job-epochs", "auto", "1"), batch_size: num("job-batch", "auto", "1"),
    learning_rate: num("job-lr", "auto"), learning_rate_multiplier: num("job-lrm", "auto"),
    max_seq_length: num("job-maxlen", "1024", "1"), validation_split: num("job-split", "none"),
    lora_r: num("job-lora-r", "auto", "1"), beta: num("job-beta", "DPO only"),
  };
  const suffix = h("input", { id: "job-suffix", placeholder: "my-model", maxlength: "64" });
  const seed = num("job-seed", "42", "1");
  const metadata = h("input", { id: "job-metadata", placeholder: "team=support" });
  async function loadChoices() {
    const [models, files] = await Promise.all([api("GET", "/models"), api("GET", "/files?purpose=fine-tune&limit=1000")]);
    if (!current(token)) return;
    model.replaceChildren(...models.data.map((m) => h("option", { value: m.id }, m.id)));
    const opts = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
    training.replaceChildren(...opts.map(([v, t]) => h("option", { value: v }, t)));
    validation.replaceChildren(h("option", { value: "" }, "(none)"), ...opts.map(([v, t]) => h("option", { value: v }, t)));
  }
  const submit = guard(async (e) => {
    e.preventDefault();
    const hp = {};
    for (const [name, input] of Object.entries(inputs)) {
      if (input.value !== "") hp[name] = Number(input.value);
    }
    if (method.value !== "dpo") delete hp.beta;
    hp.tuning = tuning.value;
    const body = { model: model.value, training_file: training.value,
                   method: { type: method.value, [method.value]: { hyperparameters: hp } } };
    if (!body.training_file) throw new Error("Upload a training file first (Files page).");
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value !== "") body.seed = Number(seed.value);
    if (metadata.value.trim()) {
      body.metadata = Object.fromEntries(metadata.value.split(/[,\s]+/).filter(Boolean).map((p) => {
        const [k, ...rest] = p.split("="); return [k, rest.join("=")];
      }));
    }
    const job = await api("POST", "/fine_tuning/jobs", body);
    const resolved = job.method[job.method.type].hyperparameters;
    resolvedBox.replaceChildren(h("div", { class: "card", id: "created-job", "data-id": job.id },
      h("h2", {}, "Created ", h("a", { href: `#/job/${job.id}` }, job.id), " ", badge(job.status)),
      h("p", { class: "muted" }, "Hyperparameters as the server resolved them:"),
      tableOf(["name", "value"], Object.entries(resolved).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, fmtNum(v)))),
        { id: "created-hparams" })));
    await after();
  });
  guard(loadChoices)();
  return h("details", { class: "card", id: "create-job", open: true },
    h("summary", {}, h("strong", {}, "New fine-tuning job")),
    h("form", { id: "job-form", onsubmit: submit },
      h("div", { class: "form" }, field("base model", model), field("training file", training),
        field("validation file", validation), field("method", method), field("tuning", tuning),
        field("epochs", inputs.n_epochs), field("batch size", inputs.batch_size),
        field("learning rate", inputs.learning_rate), field("LR multiplier", inputs.learning_rate_multiplier),
        field("max seq length", inputs.max_seq_length), field("validation split", inputs.validation_split),
        field("LoRA r", inputs.lora_r), field("DPO beta", inputs.beta), field("suffix", suffix),
        field("seed", seed), field("metadata", metadata)),
      h("p", {}, h("button", { class: "primary", type: "submit", id: "job-submit" }, "Start job"), " ",
        h("button", { type: "button", onclick: guard(loadChoices) }, "Reload files and models"))));
}

/* ---------- charts: hand-drawn SVG polylines ---------- */
const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}
function lineChart(id, title, series) {
  // series: [{name, cls, points: [[x, y], ...]}]
  const W = 560, H = 240, L = 48, R = 12, T = 12, B = 28;
  const all = series.flatMap((x) => x.points).filter(([, y]) => Number.isFinite(y));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const box = h("div", { class: "card chart", id },
    h("div", { class: "row" }, h("strong", {}, title),
      h("span", { class: "legend" }, series.map((x) => h("span", {}, h("span", { class: `sw ${x.cls}` }), x.name)))));
  if (!all.length) {
    box.append(h("p", { class: "muted" }, "No points yet."));
    box.dataset.points = "0";
    return box;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("line", { class: "gridline", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    const t = s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }); t.textContent = fmtNum(v, 3); svg.append(t);
  }
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  for (const v of [x0, Math.round((x0 + x1) / 2), x1]) {
    const t = s("text", { x: X(v), y: H - B + 16, "text-anchor": "middle" }); t.textContent = String(v); svg.append(t);
  }
  const xl = s("text", { x: W - R, y: H - 2, "text-anchor": "end" }); xl.textContent = "step"; svg.append(xl);
  let count = 0;
  for (const x of series) {
    const pts = x.points.filter(([, y]) => Number.isFinite(y));
    count += pts.length;
    if (!pts.length) continue;
    svg.append(s("polyline", { class: x.cls, "data-series": x.name, "data-points": pts.length,
                               points: pts.map(([a, b]) => `${X(a).toFixed(1)},${Y(b).toFixed(1)}`).join(" ") }));
    if (pts.length < 3) pts.forEach(([a, b]) => svg.append(s("circle", { class: `dot ${x.cls}`, cx: X(a), cy: Y(b), r: 3 })));
  }
  box.dataset.points = String(count);
  box.append(svg);
  return box;
}

/* ---------- Job detail ---------- */
function jobPage(view, jobId, _query, token) {
  const head = h("div", { id: "job-head" });
  const charts = h("div", { class: "grid2", id: "charts" });
  const evalBox = h("div", { id: "evaluation" });
  const ckptBox = h("div", { id: "checkpoints" });
  const hpBox = h("div", { id: "hyperparameters" });
  const logBox = h("div", { id: "events" });
  view.append(h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), head, charts, evalBox, ckptBox, hpBox, logBox);
  let events = [];
  let lastId = null;
  let finished = false;
  async function refresh() {
    const job = await api("GET", `/fine_tuning/jobs/${jobId}`);
    const fresh = lastId ? await newEvents(jobId, lastId) : await allEvents(jobId);
    if (!current(token)) return;
    if (fresh.length) { events = events.concat(fresh); lastId = events[events.length - 1].id; }
    const metrics = events.filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
    const last = metrics[metrics.length - 1];
    head.replaceChildren(h("div", { class: "card" },
      h("h1", {}, `Job ${job.id} `, badge(job.status)),
      kv([["base model", job.model], ["fine-tuned model", job.fine_tuned_model ? h("span", { class: "mono", id: "job-model-name" }, job.fine_tuned_model) : ""],
          ["progress", last ? progressOf(job, last) : ""], ["training file", job.training_file],
          ["validation file", job.validation_file], ["suffix", job.user_provided_suffix], ["seed", job.seed],
          ["created", fmtTime(job.created_at)], ["finished", fmtTime(job.finished_at)],
          ["trained tokens", job.trained_tokens],
          ["metadata", job.metadata ? JSON.stringify(job.metadata) : ""],
          ["error", job.error && job.error.code ? h("span", { class: "badge bad", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : ""]]),
      h("p", {}, jobActions(job, refresh),
        job.fine_tuned_model ? h("a", { href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}&compare=${encodeURIComponent(job.model)}`, id: "chat-model" }, " Chat with this model") : null,
        (job.result_files || []).map((f) => h("button", { class: "result-btn", onclick: guard(() => downloadFile(f, `${job.id}-metrics.csv`)) }, `Download metrics CSV (${f})`)))));
    fixBars(head);
    const pick = (key) => metrics.filter((m) => m[key] !== undefined && m[key] !== null).map((m) => [m.step, m[key]]);
    charts.replaceChildren(
      lineChart("loss-chart", "Loss", [{ name: "training", cls: "train", points: pick("train_loss") },
                                        { name: "validation", cls: "valid", points: pick("valid_loss") }]),
      lineChart("accuracy-chart", "Token accuracy", [
        { name: "training", cls: "train", points: pick("train_mean_token_accuracy") },
        { name: "validation", cls: "valid", points: pick("valid_mean_token_accuracy") }]));
    hpBox.replaceChildren(h("div", { class: "card" }, h("h2", {}, `Hyperparameters (${job.method.type}, as resolved)`),
      tableOf(["name", "value"], Object.entries(job.method[job.method.type].hyperparameters || {})
        .map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, fmtNum(v)))))));
    evalBox.replaceChildren(job.evaluation ? renderEvaluation(job.evaluation) : "");
    logBox.replaceChildren(h("div", { class: "card" }, h("h2", {}, `Events (${events.length})`),
      tableOf(["time", "level", "message"], events.slice().reverse().slice(0, 300).map((e) =>
        h("tr", { class: `event ${e.level}` }, h("td", { class: "hide-narrow" }, fmtTime(e.created_at)),
          h("td", {}, e.level), h("td", {}, e.message))))));
    if (!finished || fresh.some((e) => e.message.startsWith("Checkpoint"))) {
      const page = await api("GET", `/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
      if (!current(token)) return;
      ckptBox.replaceChildren(h("div", { class: "card" }, h("h2", {}, `Checkpoints (${page.data.length})`),
        page.data.length ? tableOf(["step", "train loss", "valid loss", "valid accuracy", "model", ""],
          page.data.map((c) => h("tr", { "data-step": c.step_number },
            h("td", { class: "num" }, c.step_number), h("td", { class: "num" }, fmtNum(c.metrics.train_loss)),
            h("td", { class: "num" }, fmtNum(c.metrics.valid_loss)),
            h("td", { class: "num" }, fmtNum(c.metrics.valid_mean_token_accuracy)),
            h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
            h("td", {}, h("a", { class: "chat-ckpt", href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Chat")))),
          { id: "checkpoints-table" }) : h("p", { class: "muted" }, "None yet.")));
    }
    finished = TERMINAL.includes(job.status) || job.status === "paused";
  }
  guard(refresh)();
  every(1500, () => { if (!finished && document.visibilityState === "visible") refresh().catch((e) => showError(e.message)); });
}

function renderEvaluation(ev) {
  const pair = (p) => (p && typeof p === "object" && "base" in p)
    ? `${fmtNum(p.base)} → ${fmtNum(p.tuned)}` : fmtNum(p);
  const rows = [];
  const add = (label, value) => { if (value !== undefined && value !== null) rows.push(h("tr", {}, h("td", {}, label), h("td", { class: "num" }, pair(value)))); };
  add("validation loss", ev.valid_loss);
  add("validation token accuracy", ev.valid_mean_token_accuracy);
  add("full validation loss", ev.full_valid_loss);
  if (ev.generation) add(`answers (${ev.generation.metric})`, ev.generation);
  if (ev.generation && ev.generation.exact_match) add("exact match", ev.generation.exact_match);
  if (ev.preference) Object.entries(ev.preference).forEach(([k, v]) => add(`preference ${k}`, v));
  if (ev.forgetting) add(`forgetting (${ev.forgetting.metric})`, ev.forgetting);
  if (ev.forgetting && ev.forgetting.skills) add("skill probes", ev.forgetting.skills);
  const helped = ev.helped === true ? h("span", { class: "badge ok" }, "helped")
    : ev.helped === false ? h("span", { class: "badge bad" }, "did not help") : null;
  return h("div", { class: "card", id: "evaluation-card" },
    h("h2", {}, "Evaluation: base → tuned ", helped),
    h("p", { class: "muted" }, `published step ${ev.selected_step} of ${ev.last_step} (${ev.checkpoint_selection || "best"})` +
      (ev.stopped_early_at ? `, stopped early at ${ev.stopped_early_at}` : "") + (ev.seconds ? `; evaluation took ${fmtNum(ev.seconds, 2)} s` : "")),
    tableOf(["measure", "base → tuned"], rows),
    (ev.warnings || []).map((w) => h("p", { class: "notice" }, h("strong", {}, w.code), `: ${w.message}`)));
}

/* ---------- Playground ---------- */
function playgroundPage(view, _arg, query, token) {
  const modelA = h("select", { id: "pg-model-a" });
  const modelB = h("select", { id: "pg-model-b" });
  const compare = h("input", { type: "checkbox", id: "pg-compare", checked: query.get("compare") ? true : null });
  const system = h("textarea", { id: "pg-system", placeholder: "System message (optional)", rows: "2" });
  const prompt = h("textarea", { id: "pg-prompt", placeholder: "Your message", rows: "3" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", value: "64", min: "1" });
  const temperature = h("input", { id: "pg-temperature", type: "number", value: "0", step: "0.1", min: "0" });
  const colA = h("div", { class: "card chat", id: "pg-chat-a" });
  const colB = h("div", { class: "card chat", id: "pg-chat-b" });
  const histories = { a: [], b: [] };
  const columns = h("div", { class: "grid2" }, colA, colB);
  const sync = () => { colB.hidden = !compare.checked; modelB.disabled = !compare.checked; };
  compare.addEventListener("change", sync);
  async function loadModels() {
    const models = await api("GET", "/models");
    if (!current(token)) return;
    const ids = models.data.map((m) => m.id);
    const want = query.get("model");
    if (want && !ids.includes(want)) ids.unshift(want);
    const opts = (sel) => ids.map((id) => h("option", { value: id, selected: id === sel }, id));
    modelA.replaceChildren(...opts(want || ids[0]));
    modelB.replaceChildren(...opts(query.get("compare") || ids.find((id) => !id.startsWith("ft:")) || ids[0]));
  }
  async function streamInto(col, key, model, history) {
    const answer = h("span", { class: "answer" });
    col.append(h("div", { class: "msg assistant" }, h("span", { class: "who" }, model), answer));
    const messages = (system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []).concat(history);
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: `Bearer ${apiKey()}`, "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, max_tokens: Number(maxTokens.value) || 64,
                             temperature: Number(temperature.value) || 0 }),
    });
    if (!response.ok) {
      let data = null; try { data = await response.json(); } catch (_) { /* empty */ }
      answer.parentElement.remove();
      throw new ApiError(response.status, data);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 1);
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") continue;
        let chunk; try { chunk = JSON.parse(payload); } catch (_) { continue; }
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (piece) { text += piece; answer.textContent = text; }
      }
    }
    answer.dataset.done = "1";
    histories[key].push({ role: "assistant", content: text });
  }
  const send = guard(async (e) => {
    if (e) e.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    const targets = [["a", colA, modelA.value]].concat(compare.checked ? [["b", colB, modelB.value]] : []);
    await Promise.all(targets.map(async ([key, col, model]) => {
      histories[key].push({ role: "user", content: text });
      col.append(h("div", { class: "msg user" }, text));
      await streamInto(col, key, model, histories[key]);
    }));
  });
  const clear = () => { histories.a = []; histories.b = []; colA.replaceChildren(); colB.replaceChildren(); };
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
  view.append(h("h1", {}, "Playground"),
    h("form", { class: "card", id: "pg-form", onsubmit: send },
      h("div", { class: "row" }, h("div", { class: "field" }, h("label", {}, "model"), modelA),
        h("label", {}, compare, " compare with"), h("div", { class: "field" }, h("label", {}, "second model"), modelB),
        h("div", { class: "field" }, h("label", {}, "max tokens"), maxTokens),
        h("div", { class: "field" }, h("label", {}, "temperature"), temperature)),
      h("p", {}, system), h("p", {}, prompt),
      h("p", {}, h("button", { class: "primary", type: "submit", id: "pg-send" }, "Send"), " ",
        h("button", { type: "button", onclick: clear }, "New conversation"),
        h("span", { class: "muted" }, "  Ctrl+Enter sends; answers stream in."))),
    columns);
  sync();
  guard(loadModels)();
}

/* ---------- Models ---------- */
function modelsPage(view, _arg, _query, token) {
  const box = h("div", { class: "card", id: "models-list" }, h("p", { class: "muted" }, "Loading…"));
  async function load() {
    const models = await api("GET", "/models");
    if (!current(token)) return;
    const rows = models.data.map((m) => h("tr", { "data-id": m.id },
      h("td", { class: "mono" }, m.id), h("td", {}, m.id.startsWith("ft:") ? (m.id.includes(":ckpt-step-") ? "checkpoint" : "fine-tuned") : "base"),
      h("td", {}, m.owned_by), h("td", { class: "hide-narrow" }, fmtTime(m.created)),
      h("td", {}, h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}` }, "Chat"), " ",
        ...(m.id.startsWith("ft:") ? [
          h("button", { class: "download-model", onclick: guard((e) => downloadModel(m.id, null, e.target)),
            title: "The adapter (LoRA) or the whole model (full fine-tune), in Hugging Face layout" }, "Download"), " ",
          h("button", { class: "download-merged", onclick: guard((e) => downloadModel(m.id, "merged", e.target)),
            title: "Base and adapter merged into one model (built on first request)" }, "Download merged"), " ",
          m.id.includes(":ckpt-step-") ? null : h("button", { class: "danger delete-model", onclick: guard(async () => {
            if (!confirm(`Delete ${m.id}?`)) return;
            await api("DELETE", `/models/${m.id}`);
            await load();
          }) }, "Delete")] : []))));
    box.replaceChildren(tableOf(["id", "kind", "owned by", "created", ""], rows, { id: "models-table" }),
      h("p", { class: "muted" }, "Downloads are tar archives in Hugging Face layout (weights, config, tokenizer, " +
        "manifest and a model card); a job's metrics CSV downloads from its page."));
  }
  view.append(h("h1", {}, "Models"), box);
  guard(load)();
}

/* ---------- start ---------- */
window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", () => { setupKeyForm(); render(); });
