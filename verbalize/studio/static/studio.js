// verbalize studio: the page's logic (no library, nothing fetched but the studio's own API).
"use strict";

const $ = (id) => document.getElementById(id);
const HEADERS = { "Content-Type": "application/json", "X-Verbalize-Studio": "1" };
const DEBOUNCE_MS = 150;
const POLL_MS = 100;
const state = { name: null, base: null, job: null, timer: null, checkSeq: 0, result: null, versions: [] };

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: HEADERS, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { message: r.statusText }; }
  return { status: r.status, ok: r.ok, data };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = kind || "";
  s.setAttribute("role", kind === "error" ? "alert" : "status");
}

const draftKey = (name) => `verbalize-studio:draft:${name}`;

function keepDraft() {
  if (!state.name) return;
  localStorage.setItem(draftKey(state.name), JSON.stringify({ text: $("editor").value, base: state.base }));
}

async function loadFiles() {
  const { data } = await api("/api/files");
  for (const t of data.templates) $("template").append(el("option", { value: t, text: t }));
  for (const d of data.data) $("data").append(el("option", { value: d, text: d }));
  if (!data.data.length) $("data").append(el("option", { value: "", text: "(none: start with --data FILE)" }));
  for (const c of data.calibrations) $("calibration").append(el("option", { value: c, text: c }));
  $("size").value = data.size;
  const wanted = new URLSearchParams(location.search).get("template");
  if (wanted && data.templates.includes(wanted)) $("template").value = wanted;
  if (data.templates.length) await openTemplate($("template").value, true);
}

async function openTemplate(name, useDraft) {
  const { ok, data } = await api(`/api/templates/${encodeURIComponent(name)}`);
  if (!ok) { setStatus(data.message, "error"); return; }
  state.name = name;
  state.base = data.version;
  let text = data.text;
  const draft = useDraft ? JSON.parse(localStorage.getItem(draftKey(name)) || "null") : null;
  if (draft && draft.text !== data.text) {
    text = draft.text;
    state.base = draft.base;
    setStatus("restored your unsaved draft", "ok");
  } else {
    localStorage.removeItem(draftKey(name));
  }
  $("editor").value = text;
  state.versions = [{ label: "on disk when opened", text: data.text }];
  await loadHistory();
  onEdit(true);
}

async function loadHistory() {
  const { data } = await api(`/api/history/${encodeURIComponent(state.name)}`);
  const list = $("history");
  list.replaceChildren();
  for (const h of data.history || []) {
    const restore = el("button", { type: "button", text: "Restore" });
    restore.addEventListener("click", async () => {
      const got = await api(`/api/history/${encodeURIComponent(state.name)}/${encodeURIComponent(h.entry)}`);
      if (!got.ok) { setStatus(got.data.message, "error"); return; }
      $("editor").value = got.data.text;
      onEdit(true);
      setStatus(`restored the version saved before ${h.saved} into the editor; Save to keep it`, "ok");
    });
    list.append(el("li", { "data-version": h.version }, `${h.saved} (${h.version}) `, restore));
  }
  if (!list.children.length) list.append(el("li", { class: "note", text: "no earlier versions saved yet" }));
  const other = $("compare-with");
  other.replaceChildren(el("option", { value: "", text: "(the version on disk)" }));
  for (const h of data.history || []) other.append(el("option", { value: h.entry, text: `saved before ${h.saved}` }));
}

function onEdit(now) {
  state.lastInput = performance.now(); // feedback times are shown from here (data-ms attributes, for the tests)
  keepDraft();
  clearTimeout(state.timer);
  state.timer = setTimeout(check, now ? 0 : DEBOUNCE_MS);
}

async function check() {
  const seq = ++state.checkSeq;
  const text = $("editor").value;
  // the evaluation starts at once (the server refuses an invalid text itself): no round trip waits for the check
  const scored = $("data").value ? evaluate(text, seq) : Promise.resolve(false);
  const { ok, data } = await api("/api/check", { name: state.name, text, data: $("data").value || null });
  if (seq !== state.checkSeq) return; // a newer edit is being checked
  if (!ok) { setStatus(data.message, "error"); return; }
  showProblems(data.problems);
  $("prompt").textContent = data.prompt === null ? "" : data.prompt;
  showTokens(data.tokens);
  $("save").disabled = !data.ok;
  $("problems").dataset.ms = (performance.now() - state.lastInput).toFixed(1);
  if (!(await scored)) $("right").classList.add("stale");
}

function showProblems(problems) {
  const list = $("problems");
  list.replaceChildren();
  list.className = problems.length ? "" : "ok";
  if (!problems.length) list.append(el("li", { text: "no problems found" }));
  for (const p of problems) {
    const li = el("li", { "data-key": p.key });
    if (p.key) li.append(el("code", { text: p.key }), " ");
    li.append(p.message);
    list.append(li);
  }
}

function showTokens(tokens) {
  const body = $("tokens").tBodies[0];
  body.replaceChildren();
  for (const t of tokens) {
    const marks = el("td", { class: "l" });
    if (t.multi) marks.append(el("span", { class: "mark multi", text: `${t.ids.length} tokens` }));
    if (t.shared.length) marks.append(el("span", { class: "mark shared", text: `first token shared with ${t.shared.join(", ")}` }));
    if (!t.fits) marks.append(el("span", { class: "mark nofit", text: "does not fit" }));
    body.append(el("tr", {}, el("td", { class: "l", text: t.label }), el("td", { class: "l", text: t.word }),
      el("td", { class: "l", text: t.pieces.join(" · ") }), marks));
  }
}

async function evaluate(text, seq) {
  const size = Math.max(1, parseInt($("size").value, 10) || 200);
  const { ok, data } = await api("/api/evaluate", { name: state.name, text, data: $("data").value, size });
  if (seq !== undefined && seq !== state.checkSeq) return true; // a newer edit took over
  if (!ok) {
    if (data.error !== "invalid_template") setStatus(data.message, "error");
    return false;
  }
  state.job = data.id;
  state.versions = state.versions.filter((v) => v.job !== data.id);
  showJob(data);
  poll(data.id);
  return true;
}

async function poll(id) {
  while (state.job === id) {
    const have = state.mergedJob === id ? Object.keys(state.merged).join(",") : "";
    const { ok, data } = await api(`/api/evaluate/${encodeURIComponent(id)}?have=${encodeURIComponent(have)}`);
    if (!ok || state.job !== id) return;
    showJob(data);
    if (!["queued", "running"].includes(data.status)) return;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function fmt(x) { return x === undefined || x === null ? "–" : Number(x).toFixed(4); }
function ci(pair) { return pair ? `${pair[0].toFixed(3)} to ${pair[1].toFixed(3)}` : ""; }

function showJob(job) {
  if (state.mergedJob !== job.id) { state.mergedJob = job.id; state.merged = {}; }
  Object.assign(state.merged, job.results); // polls send only the calibrations the page does not hold yet
  job.results = state.merged;
  $("progress").value = job.progress;
  $("step").textContent = job.status === "done" ? `done in ${job.seconds.toFixed(2)} s` : job.status === "failed" ? job.error : job.step;
  $("sample-note").textContent = `on the first ${job.size} rows of ${job.data}` + (job.n_skipped ? ` (${job.n_skipped} skipped)` : "");
  state.result = job;
  const wanted = $("calibration").value;
  const shown = `${job.id}|${Object.keys(job.results).join(",")}|${wanted}|${job.status}`;
  if (shown === state.shown) return; // nothing new to draw: progress only
  state.shown = shown;
  const r = job.results[wanted] || job.results.none;
  $("right").classList.toggle("stale", !r);
  $("right").setAttribute("data-job", job.id);
  $("right").setAttribute("data-status", job.status);
  $("right").setAttribute("data-ready", Object.keys(job.results).join(" "));
  if (job.results.none && $("right").dataset.msJob !== job.id) {
    $("right").dataset.msJob = job.id;
    $("right").dataset.ms = (performance.now() - state.lastInput).toFixed(1);
  }
  showCalibrations(job.results);
  showShares(job.words || []);
  if (!r) return;
  for (const key of ["accuracy", "macro_f1", "ece"]) document.querySelector(`[data-metric="${key}"]`).textContent = fmt(r[key]);
  document.querySelector('[data-metric="n"]').textContent = r.n;
  document.querySelector('[data-ci="accuracy"]').textContent = `95% CI ${ci(r.accuracy_ci)}`;
  document.querySelector('[data-ci="macro_f1"]').textContent = `95% CI ${ci(r.macro_f1_ci)}`;
  $("ci-note").textContent = `Accuracy: ${r.ci_methods.accuracy}. Macro-F1: ${r.ci_methods.macro_f1}.`;
  $("confusion").innerHTML = r.svg.confusion; // drawn by the studio itself, every text escaped
  $("confusion").setAttribute("data-confusion", JSON.stringify(r.confusion));
  $("reliability").innerHTML = r.svg.reliability;
  showPerClass(r);
  showDistribution(r.label_distribution);
  showErrors(r);
}

function showDistribution(d) {
  const body = $("label-distribution").tBodies[0];
  body.replaceChildren();
  if (!d) return;
  const pct = (v) => `${(100 * v).toFixed(1)}%`;
  d.labels.forEach((label, k) => {
    body.append(el("tr", { "data-label": label }, el("th", { text: label }), el("td", { text: pct(d.true[k]) }),
      el("td", { text: pct(d.predicted[k]) }), el("td", { text: d.estimated ? pct(d.estimated[k]) : "–" })));
  });
  $("distribution-note").textContent = d.estimated
    ? `estimated by the prior calibration on the ${d.n_estimated} rows; ${d.shifted ? "applied" : "not applied (near uniform)"}`
    : "estimated: only the prior calibration (and auto when it chooses it) estimates the label distribution";
}

function showCalibrations(results) {
  const body = $("calibrations").tBodies[0];
  body.replaceChildren();
  for (const [name, r] of Object.entries(results)) {
    body.append(el("tr", { "data-calibration": name }, el("th", { text: name }), el("td", { text: fmt(r.accuracy) }),
      el("td", { text: ci(r.accuracy_ci) }), el("td", { text: fmt(r.macro_f1) }), el("td", { text: ci(r.macro_f1_ci) }),
      el("td", { text: fmt(r.ece) })));
  }
}

function showShares(words) {
  const body = $("word-shares").tBodies[0];
  body.replaceChildren();
  for (const w of words) {
    body.append(el("tr", {}, el("td", { class: "l", text: w.label }), el("td", { class: "l", text: w.word }),
      el("td", { text: `${(100 * w.share).toFixed(1)}%` })));
  }
}

function showPerClass(r) {
  const body = $("per-class").tBodies[0];
  body.replaceChildren();
  for (const c of r.per_class) {
    body.append(el("tr", {}, el("th", { text: c.label }), el("td", { text: c.precision.toFixed(3) }),
      el("td", { text: c.recall.toFixed(3) }), el("td", { text: c.f1.toFixed(3) }), el("td", { text: String(c.support) })));
  }
}

function showErrors(r) {
  const table = $("errors");
  table.tHead.replaceChildren(el("tr", {}, el("th", { text: "row" }), el("th", { text: "text" }), el("th", { text: "label" }),
    el("th", { text: "predicted" }), ...r.classes.map((c) => el("th", { text: `p(${c})` }))));
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const e of r.errors.slice(0, 100)) {
    const text = typeof e.text === "string" ? e.text : JSON.stringify(e.text);
    body.append(el("tr", {}, el("td", { text: String(e.row + 1) }), el("td", { class: "text", text }), el("td", { text: e.label }),
      el("td", { text: e.prediction }), ...r.classes.map((c) => el("td", { text: e.probabilities[c].toFixed(3) }))));
  }
}

async function save() {
  const text = $("editor").value;
  const { status, data } = await api("/api/save", { name: state.name, text, version: state.base });
  if (status === 200) {
    state.base = data.version;
    localStorage.removeItem(draftKey(state.name));
    setStatus(`saved ${state.name} (version ${data.version})`, "ok");
    await loadHistory();
  } else if (status === 422) {
    showProblems(data.problems);
    setStatus(`not saved: ${data.problems.length} problem(s) in the template`, "error");
  } else {
    setStatus(`not saved: ${data.message}`, "error");
  }
}

async function compare() {
  const other = $("compare-with").value;
  const size = Math.max(1, parseInt($("size").value, 10) || 200);
  const path = other ? `/api/history/${encodeURIComponent(state.name)}/${encodeURIComponent(other)}` : `/api/templates/${encodeURIComponent(state.name)}`;
  const otherText = (await api(path)).data.text;
  const a = await api("/api/evaluate", { name: state.name, text: otherText, data: $("data").value, size });
  if (!a.ok) { setStatus(a.data.message, "error"); return; }
  state.job = null; // stop showing progress of the current edit while the other version runs
  let job = a.data;
  while (["queued", "running"].includes(job.status)) {
    await new Promise((r) => setTimeout(r, POLL_MS));
    job = (await api(`/api/evaluate/${encodeURIComponent(job.id)}`)).data;
  }
  await evaluate($("editor").value);
  while (state.result && state.result.id === state.job && ["queued", "running"].includes(state.result.status)) {
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  const cal = $("calibration").value;
  const { ok, data } = await api("/api/compare", { a: job.id, b: state.job, calibration: cal });
  const out = $("comparison");
  out.replaceChildren();
  if (!ok) { out.append(el("p", { text: data.message })); return; }
  out.append(el("table", {}, el("tr", {}, el("th", { text: "" }), el("th", { text: "accuracy" }), el("th", { text: "macro-F1" })),
    el("tr", {}, el("th", { text: "other" }), el("td", { text: fmt(data.a.accuracy) }), el("td", { text: fmt(data.a.macro_f1) })),
    el("tr", {}, el("th", { text: "this edit" }), el("td", { text: fmt(data.b.accuracy) }), el("td", { text: fmt(data.b.macro_f1) }))));
  const rows = el("table", {}, el("tr", {}, el("th", { text: "row" }), el("th", { text: "text" }), el("th", { text: "label" }),
    el("th", { text: "other" }), el("th", { text: "this edit" })));
  for (const c of data.changed) {
    const text = typeof c.text === "string" ? c.text : JSON.stringify(c.text);
    rows.append(el("tr", {}, el("td", { text: String(c.row + 1) }), el("td", { class: "text", text }), el("td", { text: c.label }),
      el("td", { text: c.a }), el("td", { text: c.b })));
  }
  out.append(el("p", { text: `${data.changed.length} rows changed their predicted label` }), rows);
}

async function suggest() {
  const box = $("suggestions");
  box.replaceChildren(el("p", { class: "note", text: "searching the model's vocabulary on the labeled rows…" }));
  const size = Math.max(1, parseInt($("size").value, 10) || 200);
  const { ok, data } = await api("/api/suggest", { name: state.name, text: $("editor").value, data: $("data").value, size });
  box.replaceChildren();
  if (!ok) { box.append(el("p", { text: data.message })); return; }
  box.append(el("p", { class: "note", text: `cross-validated accuracy: your words ${fmt(data.template_cv_accuracy)}, suggested ${fmt(data.cv_accuracy)} (${data.choice})` }));
  for (const [label, words] of Object.entries(data.candidates)) {
    const line = el("p", {}, el("strong", { text: `${label}: ` }));
    for (const w of words) {
      const b = el("button", { type: "button", class: "word", "data-label": label, text: `+ ${w}` });
      b.addEventListener("click", () => { addWord(label, w); b.disabled = true; });
      line.append(b, " ");
    }
    box.append(line);
  }
}

function addWord(label, word) {
  // Adds "word" to the label's list in the [labels] table: the line `label = [...]`.
  const lines = $("editor").value.split("\n");
  let inLabels = false;
  for (let i = 0; i < lines.length; i++) {
    const t = lines[i].trim();
    if (t.startsWith("[")) inLabels = t === "[labels]";
    const m = inLabels && lines[i].match(/^(\s*"?([^"=\s]+)"?\s*=\s*\[)(.*)\](\s*(#.*)?)$/);
    if (m && m[2] === label) {
      const inner = m[3].trim();
      lines[i] = `${m[1]}${inner}${inner ? ", " : ""}${JSON.stringify(word)}]${m[4] || ""}`;
      $("editor").value = lines.join("\n");
      onEdit(true);
      return;
    }
  }
  setStatus(`could not find the line of label ${label} in [labels]; add ${JSON.stringify(word)} by hand`, "error");
}

document.addEventListener("DOMContentLoaded", () => {
  $("editor").addEventListener("input", () => onEdit(false));
  $("template").addEventListener("change", () => openTemplate($("template").value, true));
  $("data").addEventListener("change", () => onEdit(true));
  $("size").addEventListener("change", () => onEdit(true));
  $("calibration").addEventListener("change", () => state.result && showJob(state.result));
  $("save").addEventListener("click", save);
  $("reload").addEventListener("click", () => openTemplate(state.name, false));
  $("compare").addEventListener("click", compare);
  $("suggest").addEventListener("click", suggest);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); save(); }
  });
  loadFiles();
});
