// dsgen dashboard: plain JS over the JSON API, no build step.
// The API key lives in sessionStorage and travels only in the Authorization header.
// Everything that comes from the server (names, prompts, errors) is inserted with
// textContent / attributes, never as HTML.
"use strict";

const KEY = "dsgen.apiKey";
const POLL_MS = 1500;
const TERMINAL = ["succeeded", "failed", "cancelled"];
const EXAMPLE = `# A job spec (YAML or JSON), the same fields as \`dsgen run\`
name: tiny
model: builtin:tiny-random
classes:
  - name: cat
  - name: dog
prompts:
  templates: ["a photo of a {class} on the {place}"]
  slots: {place: [grass, sofa, beach]}
num_images: 8
seed: 7
generation: {width: 32, height: 32, steps: 2, batch_size: 4}
export: {formats: [coco, yolo]}
`;

let timers = [];
function every(ms, fn) { timers.push(setInterval(fn, ms)); }
function stopTimers() { timers.forEach(clearInterval); timers = []; }

// ------------------------------------------------------------------ DOM helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP (inline style attributes are not)
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const main = () => document.getElementById("main");
function show(...nodes) { main().replaceChildren(...nodes); }
function fmtTime(s) { return s ? new Date(s).toLocaleString() : "–"; }
function fmtEta(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
function statusBadge(status) { return el("span", { class: `status ${status}`, "data-status": status }, status); }
function progressBar(job) {
  const p = job.progress || { done: job.status === "succeeded" ? job.num_images : 0, total: job.num_images };
  const pct = p.total ? Math.floor((100 * p.done) / p.total) : 0;
  return el("div", { class: `progress ${job.status}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                     "aria-valuenow": pct, title: `${p.done} / ${p.total}` },
            el("div", { class: "bar", style: `width:${pct}%` }), el("span", { class: "label" }, `${pct}%`));
}

// ------------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status; this.body = body || {};
  }
}
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                credentials: "omit", cache: "no-store" });
  let data = null;
  if (r.status !== 204) { try { data = await r.json(); } catch (_) { data = null; } }
  if (r.status === 401 && !path.startsWith("/v1/models")) { signOut("Your key was refused; sign in again."); }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}
const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

// --------------------------------------------------------------------- sign in
function signedIn() { return sessionStorage.getItem(KEY) !== null; }
function signOut(message) {
  sessionStorage.removeItem(KEY);
  location.hash = "#/signin";
  route(message);
}
function viewSignIn(message) {
  const input = el("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off",
                              placeholder: "dsg_...", "aria-describedby": "key-error" });
  const error = el("p", { class: "field-error", id: "key-error" }, message || "");
  async function attempt(key) {
    sessionStorage.setItem(KEY, key);
    try {
      await api("GET", "/v1/models");
      location.hash = "#/jobs";
    } catch (e) {
      sessionStorage.removeItem(KEY);
      error.textContent = e.status === 401 ? (key ? "This key is unknown or revoked." : "This server needs an API key.")
                                           : `Cannot reach the server: ${e.message}`;
    }
  }
  const form = el("form", { class: "card", id: "signin-form", onsubmit: (ev) => { ev.preventDefault(); attempt(input.value.trim()); } },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Paste an API key (", el("code", {}, "dsgen keys create --tenant NAME"),
       "). It is kept for this browser tab only."),
    el("label", { for: "api-key" }, "API key"), input, error,
    el("div", { class: "toolbar" },
       el("button", { type: "submit", class: "primary", id: "signin" }, "Sign in"),
       el("button", { type: "button", id: "nokey", onclick: () => attempt("") }, "Continue without a key (embedded mode)")));
  show(el("div", { class: "signin" }, form));
  input.focus();
}

// ------------------------------------------------------------------------- jobs
const jobCache = new Map(); // id -> full job view (terminal ones are not fetched again)
async function viewJobs() {
  const body = el("tbody", { id: "jobs-body" });
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["Name", "Dataset", "Status", "Progress", "Images", "Images/s", "ETA", "Created"].map((h) => el("th", {}, h)))),
    body);
  const note = el("p", { class: "muted", id: "jobs-empty" });
  show(el("h1", {}, "Jobs"), el("div", { class: "toolbar" }, el("a", { href: "#/submit" }, "Submit a job")), table, note);
  async function refresh() {
    const page = await api("GET", "/v1/jobs?limit=50");
    await Promise.all(page.items.map(async (j) => {
      const known = jobCache.get(j.id);
      if (!known || !TERMINAL.includes(known.status) || known.status !== j.status) {
        try { jobCache.set(j.id, await api("GET", jobPath(j.id))); } catch (_) { /* deleted meanwhile */ }
      }
    }));
    body.replaceChildren(...page.items.map((s) => {
      const j = jobCache.get(s.id) || s;
      const p = j.progress || {};
      return el("tr", { "data-job": j.id },
        el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.name)),
        el("td", {}, j.dataset ? el("a", { href: `#/datasets/${encodeURIComponent(j.dataset)}` }, j.dataset) : "–"),
        el("td", {}, statusBadge(j.status)),
        el("td", {}, progressBar(j)),
        el("td", {}, `${p.done ?? "–"} / ${j.num_images}`),
        el("td", {}, p.images_per_s != null ? p.images_per_s.toFixed(2) : "–"),
        el("td", {}, TERMINAL.includes(j.status) ? "–" : fmtEta(p.eta_s)),
        el("td", { class: "muted" }, fmtTime(j.created_at)));
    }));
    note.textContent = page.items.length ? "" : "No jobs yet.";
  }
  await refresh();
  every(POLL_MS, () => refresh().catch(() => {}));
}

function lineagePanel(sample) {
  const lin = sample.lineage || {};
  const model = lin.model ? `${lin.model.id}${lin.model.revision ? "@" + lin.model.revision : ""}` : "–";
  return el("div", { class: "card", id: "lineage" },
    el("h2", {}, `Sample ${sample.index}`),
    el("dl", { class: "kv" },
      el("dt", {}, "seed"), el("dd", { id: "lineage-seed" }, sample.seed),
      el("dt", {}, "prompt"), el("dd", { id: "lineage-prompt" }, sample.prompt),
      el("dt", {}, "negative"), el("dd", {}, sample.negative_prompt || "–"),
      el("dt", {}, "model"), el("dd", { id: "lineage-model" }, model),
      el("dt", {}, "method"), el("dd", {}, lin.method || "–"),
      el("dt", {}, "instances"), el("dd", {}, sample.annotations.map((a) => `${a.category} [${a.bbox.map((v) => Math.round(v)).join(", ")}]`).join("; ") || "none")),
    el("h2", {}, "Quality"), el("pre", {}, JSON.stringify(sample.quality, null, 2)),
    el("h2", {}, "Parameters"), el("pre", {}, JSON.stringify(lin.parameters || {}, null, 2)),
    el("p", {}, el("a", { href: sample.urls.image, target: "_blank", rel: "noopener" }, "image"), " · ",
       sample.urls.semantic ? el("a", { href: sample.urls.semantic, target: "_blank", rel: "noopener" }, "semantic mask") : "", " · ",
       el("a", { href: sample.urls.record, target: "_blank", rel: "noopener" }, "record.json")));
}

function sampleCard(sample, spec, onPick) {
  const w = (spec.generation && spec.generation.width) || 512;
  const h = (spec.generation && spec.generation.height) || 512;
  const img = el("img", { src: sample.urls.overlay || sample.urls.image, alt: `sample ${sample.index}`, class: "overlay",
                          loading: "lazy", "data-index": sample.index });
  const boxes = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "xMidYMid meet" });
  const font = Math.max(4, Math.round(Math.min(w, h) / 14));
  for (const a of sample.annotations) {
    const [x, y, bw, bh] = a.bbox;
    const colour = a.colour || "#ffcc00";
    boxes.append(svg("rect", { x, y, width: bw, height: bh, fill: "none", stroke: colour, "stroke-width": Math.max(0.5, w / 200) }));
    boxes.append(svg("text", { x: x + 1, y: Math.max(font, y - 1), fill: colour, "font-size": font, "paint-order": "stroke",
                               stroke: "#000", "stroke-width": font / 6 }, a.category));
  }
  return el("div", { class: "sample", tabindex: 0, "data-index": sample.index, onclick: (ev) => onPick(sample, ev.currentTarget),
                     onkeydown: (ev) => { if (ev.key === "Enter") onPick(sample, ev.currentTarget); } },
    el("div", { class: "frame" }, img, boxes),
    el("div", { class: "caption", title: sample.prompt }, `#${sample.index} ${sample.prompt}`));
}

async function viewJob(id) {
  let job = await api("GET", jobPath(id));
  const head = el("div");
  const shards = el("tbody");
  const exportsBox = el("div", { id: "exports" });
  const gallery = el("div", { class: "gallery", id: "gallery" });
  const pager = el("div", { class: "pager" });
  const side = el("div", { id: "lineage-box", style: "flex: 0 0 340px" });
  const message = el("p", { class: "error", id: "action-error" });
  const cursors = [null];
  let pageNo = 0, galleryDone = -1;

  async function act(what) {
    message.textContent = "";
    try {
      const r = await api("POST", `${jobPath(id)}/${what}`);
      job = r.job || r;
      render();
    } catch (e) { message.textContent = e.message; }
  }
  function render() {
    const p = job.progress;
    const classes = Object.entries(job.class_colours || {});
    head.replaceChildren(
      el("h1", {}, job.name, " ", statusBadge(job.status)),
      el("div", { class: "toolbar" },
        el("button", { type: "button", id: "cancel", class: "danger", disabled: !["queued", "running"].includes(job.status),
                       onclick: () => act("cancel") }, "Cancel"),
        el("button", { type: "button", id: "retry", disabled: job.status !== "failed", onclick: () => act("retry") }, "Retry failed shards"),
        job.dataset ? el("span", { class: "muted" }, "dataset ", el("a", { href: `#/datasets/${encodeURIComponent(job.dataset)}` }, job.dataset),
                         job.version ? ` (v${job.version})` : "") : ""),
      message,
      el("div", { class: "card row" },
        el("div", {}, progressBar(job)),
        el("dl", { class: "kv" },
          el("dt", {}, "samples"), el("dd", { id: "done" }, `${p.done} / ${p.total}`),
          el("dt", {}, "images/s"), el("dd", {}, p.images_per_s != null ? p.images_per_s.toFixed(2) : "–"),
          el("dt", {}, "ETA"), el("dd", {}, TERMINAL.includes(job.status) ? "–" : fmtEta(p.eta_s)),
          el("dt", {}, "created"), el("dd", {}, fmtTime(job.created_at)),
          el("dt", {}, "finished"), el("dd", {}, fmtTime(job.finished_at)),
          el("dt", {}, "id"), el("dd", { class: "muted" }, job.id)),
        job.error ? el("p", { class: "error", id: "job-error" }, job.error) : ""),
      el("div", { class: "legend", id: "legend" },
        classes.map(([name, colour]) => el("span", {}, el("span", { class: "swatch", style: `background:${colour}` }), name)),
        el("span", {}, el("span", { class: "swatch ignore" }), "ignore (uncertain)")));
    shards.replaceChildren(...job.shard_list.map((s) => el("tr", {},
      el("td", {}, s.index), el("td", {}, `${s.start}–${s.stop - 1}`), el("td", {}, statusBadge(s.status)),
      el("td", {}, `${s.done} / ${s.stop - s.start}`), el("td", {}, s.attempts), el("td", { class: "muted" }, s.worker || "–"),
      el("td", { class: "error" }, s.error || ""))));
  }

  async function loadExports() {
    const ex = await api("GET", `${jobPath(id)}/exports`);
    exportsBox.replaceChildren(ex.items.length || ex.manifest_url
      ? el("p", {}, ex.items.map((e) => [el("a", { href: e.url, class: "export", "data-format": e.format, rel: "noopener" },
                                              `${e.format}.zip`), ` (${(e.size_bytes / 1024).toFixed(1)} KiB)  `]),
           ex.manifest_url ? el("a", { href: ex.manifest_url, rel: "noopener", target: "_blank" }, "manifest.json") : "")
      : el("p", { class: "muted" }, "Exports appear when the job has succeeded."));
  }
  async function loadGallery() {
    const cursor = cursors[pageNo];
    const page = await api("GET", `${jobPath(id)}/samples?limit=12${cursor ? "&cursor=" + encodeURIComponent(cursor) : ""}`);
    cursors[pageNo + 1] = page.next_cursor;
    gallery.replaceChildren(...page.items.map((s) => sampleCard(s, job.spec, (sample, node) => {
      gallery.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
      node.classList.add("selected");
      side.replaceChildren(lineagePanel(sample));
    })));
    if (!page.items.length) gallery.append(el("p", { class: "muted" }, "No samples yet."));
    pager.replaceChildren(
      el("button", { type: "button", id: "prev-page", disabled: pageNo === 0, onclick: () => { pageNo--; loadGallery(); } }, "← Previous"),
      el("span", { class: "muted" }, `page ${pageNo + 1}`),
      el("button", { type: "button", id: "next-page", disabled: !page.next_cursor, onclick: () => { pageNo++; loadGallery(); } }, "Next →"));
    galleryDone = job.progress.done;
    render();
  }
  render();
  show(head,
    el("h2", {}, "Gallery"), el("p", { class: "muted" }, "Mask overlay in class colours, boxes with class names; click a sample for its lineage."),
    el("div", { class: "row" }, el("div", { style: "flex: 1 1 560px" }, gallery, pager), side),
    el("h2", {}, "Shards"),
    el("table", { id: "shards" }, el("thead", {}, el("tr", {}, ["#", "Samples", "Status", "Done", "Attempts", "Worker", "Error"].map((h) => el("th", {}, h)))), shards),
    el("h2", {}, "Exports"), exportsBox,
    el("h2", {}, "Spec"), el("pre", { id: "spec" }, JSON.stringify(job.spec, null, 2)));
  await Promise.all([loadGallery(), loadExports()]);
  every(POLL_MS, async () => {
    if (TERMINAL.includes(job.status) && galleryDone === job.progress.done) return;
    const before = job.status;
    try { job = await api("GET", jobPath(id)); } catch (_) { return; }
    render();
    if (pageNo === 0 && job.progress.done !== galleryDone && gallery.querySelectorAll(".sample").length < 12) await loadGallery();
    if (before !== job.status && TERMINAL.includes(job.status)) { await loadExports(); await loadGallery(); }
  });
}

// ---------------------------------------------------------------------- forms
// Server-side errors ({field, message}) are shown next to the input that holds the field;
// errors inside a spec textarea are listed under it, with the line of the key when found.
function lineOf(text, field) {
  const parts = field.split(".").filter((p) => !/^\d+$/.test(p));
  const lines = text.split("\n");
  let from = 0;
  for (const part of parts) {
    const re = new RegExp(`(^|[\\s{,])"?${part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"?\\s*:`);
    const i = lines.findIndex((l, n) => n >= from && re.test(l));
    if (i < 0) return null;
    from = i;
  }
  return from + 1;
}
function showErrors(form, errors, specBox) {
  form.querySelectorAll(".field-error[data-for]").forEach((n) => { n.textContent = ""; });
  form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  const list = form.querySelector("ul.field-errors");
  if (list) list.replaceChildren();
  for (const { field, message } of errors) {
    const slot = form.querySelector(`.field-error[data-for="${CSS.escape(field)}"]`);
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (slot) {
      slot.textContent = message;
      if (input) input.classList.add("invalid");
    } else if (list && specBox) {
      const specField = field.startsWith("spec.") ? field.slice(5) : field;
      const line = lineOf(specBox.value, specField);
      list.append(el("li", { "data-field": field }, el("code", {}, field), line ? ` (line ${line})` : "", `: ${message}`));
      specBox.classList.add("invalid");
    }
  }
}
function errorsOf(e) {
  if (e.body && e.body.errors) return e.body.errors;
  return [{ field: (e.body && e.body.field) || "body", message: e.message }];
}
async function specFromText(text) {
  try { const v = JSON.parse(text); if (v && typeof v === "object" && !Array.isArray(v)) return v; } catch (_) { /* YAML */ }
  return (await api("POST", "/v1/specs/parse", { text })).spec;
}

function viewSubmit() {
  const spec = el("textarea", { name: "spec", id: "spec-text", spellcheck: "false" });
  spec.value = sessionStorage.getItem("dsgen.draft") || EXAMPLE;
  const dataset = el("input", { type: "text", name: "dataset", id: "dataset", placeholder: "optional: makes the job a version of this dataset" });
  const status = el("p", { class: "muted", id: "submit-status" });
  const form = el("form", { class: "card", id: "submit-form" },
    el("label", { for: "spec-text" }, "Job spec (YAML or JSON)"), spec,
    el("ul", { class: "field-errors", id: "spec-errors" }),
    el("p", { class: "field-error", "data-for": "text" }),
    el("label", { for: "dataset" }, "Dataset"), dataset, el("p", { class: "field-error", "data-for": "dataset" }),
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary", id: "submit" }, "Submit job")), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("dsgen.draft", spec.value);
    status.textContent = "Submitting…";
    try {
      const body = await specFromText(spec.value);
      const q = dataset.value.trim() ? `?dataset=${encodeURIComponent(dataset.value.trim())}` : "";
      const job = await api("POST", `/v1/jobs${q}`, body);
      status.textContent = "";
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      status.textContent = e.status === 422 ? "Please fix the fields below." : e.message;
      showErrors(form, errorsOf(e), spec);
    }
  });
  show(el("h1", {}, "Submit a job"), form);
}

// ------------------------------------------------------------------ schedules
async function viewSchedules() {
  const body = el("tbody", { id: "schedules-body" });
  const runs = el("div", { id: "runs" });
  const msg = el("p", { class: "error" });
  async function refresh() {
    const list = await api("GET", "/v1/schedules");
    body.replaceChildren(...list.items.map((s) => el("tr", { "data-schedule": s.id },
      el("td", {}, s.name), el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(s.dataset)}` }, s.dataset)),
      el("td", {}, el("code", {}, s.cron)), el("td", {}, s.timezone), el("td", {}, s.missed.replace("_", " ")),
      el("td", {}, s.enabled ? "yes" : "no"), el("td", { class: "muted" }, fmtTime(s.next_fire_at)),
      el("td", { class: "muted" }, fmtTime(s.last_fired_at)),
      el("td", {},
        el("button", { type: "button", onclick: () => showRuns(s) }, "Runs"), " ",
        el("button", { type: "button", onclick: async () => {
          try { await api("PATCH", `/v1/schedules/${s.id}`, { enabled: !s.enabled }); await refresh(); } catch (e) { msg.textContent = e.message; }
        } }, s.enabled ? "Disable" : "Enable"), " ",
        el("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Delete the schedule ${s.name}? Its jobs and dataset versions stay.`)) return;
          try { await api("DELETE", `/v1/schedules/${s.id}`); runs.replaceChildren(); await refresh(); } catch (e) { msg.textContent = e.message; }
        } }, "Delete")))));
    if (!list.items.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No schedules yet.")));
  }
  async function showRuns(s) {
    const r = await api("GET", `/v1/schedules/${s.id}/runs?limit=50`);
    runs.replaceChildren(el("h2", {}, `Runs of ${s.name}`), el("table", {},
      el("thead", {}, el("tr", {}, ["Scheduled for", "Job", "Status", "Version", "Error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, r.items.map((x) => el("tr", {},
        el("td", {}, fmtTime(x.scheduled_for)),
        el("td", {}, x.job_id ? el("a", { href: `#/jobs/${x.job_id}` }, x.job_id.slice(0, 8)) : "–"),
        el("td", {}, x.job_status ? statusBadge(x.job_status) : "–"), el("td", {}, x.version ? `v${x.version}` : "–"),
        el("td", { class: "error" }, x.error || ""))))));
  }
  const f = (name, label, input, hint) => [el("label", { for: `sch-${name}` }, label), input,
    hint ? el("div", { class: "muted" }, hint) : "", el("p", { class: "field-error", "data-for": name })];
  const spec = el("textarea", { name: "spec", id: "sch-spec", spellcheck: "false" }); spec.value = EXAMPLE;
  const form = el("form", { class: "card", id: "schedule-form" },
    el("h2", {}, "New schedule"),
    f("name", "Name", el("input", { type: "text", name: "name", id: "sch-name", placeholder: "nightly-cats" })),
    f("cron", "Cron", el("input", { type: "text", name: "cron", id: "sch-cron", value: "0 2 * * *" }), "minute hour day month weekday, or @daily, @hourly …"),
    f("timezone", "Timezone", el("input", { type: "text", name: "timezone", id: "sch-timezone", value: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" })),
    f("missed", "Missed firings", el("select", { name: "missed", id: "sch-missed" },
      el("option", { value: "skip" }, "skip them"), el("option", { value: "catch_up" }, "catch up once on recovery"))),
    f("dataset", "Dataset", el("input", { type: "text", name: "dataset", id: "sch-dataset", placeholder: "default: the schedule's name" })),
    el("label", { for: "sch-spec" }, "Job spec template (YAML or JSON)"), spec, el("ul", { class: "field-errors" }),
    el("p", { class: "field-error", "data-for": "text" }),
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary", id: "create-schedule" }, "Create schedule")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = (n) => form.querySelector(`[name=${n}]`).value.trim();
    try {
      const body = { name: v("name"), cron: v("cron"), timezone: v("timezone"), missed: v("missed"), spec: await specFromText(spec.value) };
      if (v("dataset")) body.dataset = v("dataset");
      await api("POST", "/v1/schedules", body);
      showErrors(form, [], spec);
      await refresh();
    } catch (e) { showErrors(form, errorsOf(e), spec); }
  });
  show(el("h1", {}, "Schedules"), msg,
    el("table", { id: "schedules" }, el("thead", {}, el("tr", {}, ["Name", "Dataset", "Cron", "Timezone", "Missed", "Enabled", "Next", "Last fired", ""].map((h) => el("th", {}, h)))), body),
    runs, form);
  await refresh();
}

// ------------------------------------------------------------------- datasets
async function viewDatasets() {
  const list = await api("GET", "/v1/datasets");
  show(el("h1", {}, "Datasets"), el("table", { id: "datasets" },
    el("thead", {}, el("tr", {}, ["Name", "Versions", "Latest", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.items.map((d) => el("tr", {},
      el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name)), el("td", {}, d.versions),
      el("td", {}, d.latest ? `v${d.latest}` : "–"), el("td", { class: "muted" }, fmtTime(d.created_at)))))),
    list.items.length ? "" : el("p", { class: "muted" }, "No datasets yet: submit a job with a dataset name, or create a schedule."));
}
async function viewDataset(name) {
  const base = `/v1/datasets/${encodeURIComponent(name)}`;
  const vs = await api("GET", `${base}/versions`);
  const pick = (id, sel) => el("select", { id }, vs.items.map((v) => el("option", { value: v.version, selected: v.version === sel }, v.name)));
  const a = pick("diff-base", vs.items.length > 1 ? vs.items[1].version : null), b = pick("diff-head", vs.items.length ? vs.items[0].version : null);
  const out = el("div", { id: "diff" });
  async function runDiff() {
    try {
      const d = await api("GET", `${base}/diff?base=${a.value}&head=${b.value}`);
      const row = (k, e) => el("tr", {}, el("td", {}, k), el("td", {}, e.base ?? "–"), el("td", {}, e.head ?? "–"),
        el("td", { class: e.delta > 0 ? "pos" : e.delta < 0 ? "neg" : "" }, e.delta == null ? "–" : (e.delta > 0 ? "+" : "") + e.delta));
      out.replaceChildren(el("table", { class: "diff" },
        el("thead", {}, el("tr", {}, [`v${d.base} → v${d.head}`, `v${d.base}`, `v${d.head}`, "change"].map((h) => el("th", {}, h)))),
        el("tbody", {}, row("samples", d.samples),
          Object.entries(d.instances).map(([k, e]) => row(`instances: ${k}`, e)),
          Object.entries(d.images).map(([k, e]) => row(`images with ${k}`, e)),
          Object.entries(d.quality).map(([k, e]) => row(`mean ${k}`, e)))));
    } catch (e) { out.replaceChildren(el("p", { class: "error" }, e.message)); }
  }
  show(el("h1", {}, `Dataset ${name}`),
    el("table", { id: "versions" }, el("thead", {}, el("tr", {}, ["Version", "Job", "Samples", "Created"].map((h) => el("th", {}, h)))),
      el("tbody", {}, vs.items.map((v) => el("tr", {}, el("td", {}, v.name),
        el("td", {}, el("a", { href: `#/jobs/${v.job_id}` }, v.job_id.slice(0, 8))),
        el("td", {}, (v.summary && v.summary.samples) ?? "–"), el("td", { class: "muted" }, fmtTime(v.created_at)))))),
    vs.items.length ? "" : el("p", { class: "muted" }, "No version yet (a version is made when a job of the dataset succeeds)."),
    el("p", { class: "muted" }, `Pull one: dsgen datasets pull ${name}@latest --format coco --out DIR`),
    vs.items.length ? el("div", { class: "toolbar" }, "Compare ", a, " with ", b, el("button", { type: "button", id: "run-diff", onclick: runDiff }, "Diff")) : "",
    out);
}

// ---------------------------------------------------------------------- router
async function route(message) {
  stopTimers();
  const hash = location.hash || "#/jobs";
  const nav = document.getElementById("nav");
  if (!signedIn() || hash === "#/signin") { nav.hidden = true; return viewSignIn(typeof message === "string" ? message : ""); }
  nav.hidden = false;
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  nav.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.dataset.nav === parts[0]));
  try {
    if (parts[0] === "jobs" && parts[1]) return await viewJob(parts[1]);
    if (parts[0] === "submit") return viewSubmit();
    if (parts[0] === "schedules") return await viewSchedules();
    if (parts[0] === "datasets" && parts[1]) return await viewDataset(parts[1]);
    if (parts[0] === "datasets") return await viewDatasets();
    return await viewJobs();
  } catch (e) {
    show(el("p", { class: "error" }, e.message));
  }
}
document.getElementById("signout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", () => route());
route();
