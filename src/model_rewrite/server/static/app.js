// model-rewrite web page, part 1 of 7: the page's state, the JSON API, messages, masks, input checks and the
// one place that enables every control from the server's state (syncControls). The other parts: paint.js,
// gallery.js, context.js, jobs.js, saved.js, main.js (loaded in this order; they share these globals).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const ROLE_COLORS = { copy: [230, 60, 40], paste: [40, 110, 240], context: [30, 180, 90] };

const app = {
  info: null,
  res: 64,
  tool: "copy",
  view: "edited",
  page: 0,
  gallery: null, // last /api/gallery answer
  // the draft edit: masks are canvases (res x res) holding white strokes whose alpha is the mask
  draft: { copy: null, paste: null, context: new Map() },
  job: null, // the latest job as the page last saw it
  polling: false,
  history: { entries: [], undone: [] }, // /api/history as last read
  saved: [], // /api/edits as last read
  searchResults: [],
  loadedUpdate: {}, // UpdateConfig fields of the last loaded edit
  loadedKeys: {}, // its KeyConfig
  loadedStats: null, // its StatsConfig
  pending: new Map(), // what the page asked for while a job held the model: run again when the job ends
  errors: {}, // input id -> what is wrong with it ("" when valid)
};

// --- API ------------------------------------------------------------------------------------
async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (method !== "GET") opts.headers["Content-Type"] = "application/json"; // the server requires it on every change
  if (body !== undefined) opts.body = JSON.stringify(body);
  const res = await fetch(url, opts);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.code = data && data.code;
    throw err;
  }
  return data;
}

function say(text, kind = "info") {
  const el = $("#message");
  el.textContent = text;
  el.title = text;
  el.className = kind;
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    say(err.message, err.status === 409 ? "busy" : "error");
    return undefined;
  }
}

function runningJob() {
  return app.job && app.job.state === "running" ? app.job : null;
}

function jobWords(j) {
  const what = { suggest: "suggestion", load: "loading of", joint: "joint solve of" }[j.kind] || "edit";
  const where = j.phase === "solving" && j.steps ? `, step ${j.step} of ${j.steps}` : "";
  return `the ${what} “${j.name}”${where}`;
}

// Something the user asked for that needs the model: `fn` makes the request. While a job holds the model, the
// action `retry` (what the user did, e.g. loadGallery) is kept under `name` (the latest of each kind) and run again
// when the job ends; the message says what the user did, not an API path.
async function whenFree(name, what, fn, retry) {
  try {
    app.pending.delete(name);
    return await fn();
  } catch (err) {
    if (err.status === 409 && err.code === "busy") {
      app.pending.set(name, { what, retry });
      const j = runningJob();
      say(`${what} when ${j ? jobWords(j) : "the running job"} finishes (or press Cancel)`, "busy");
      if (!app.polling) watchJob();
      return undefined;
    }
    say(err.message, err.status === 409 ? "busy" : "error");
    return undefined;
  }
}

async function flushPending() {
  const items = [...app.pending.entries()];
  app.pending.clear();
  for (const [, item] of items) await item.retry();
}

// --- masks ----------------------------------------------------------------------------------
function newMask() {
  const c = document.createElement("canvas");
  c.width = c.height = app.res;
  return c;
}

function maskIsEmpty(mask) {
  const d = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return false;
  return true;
}

// A grayscale, opaque PNG data URL: white where painted (the server reads luminance).
function maskDataUrl(mask) {
  const c = document.createElement("canvas");
  c.width = c.height = app.res;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(mask, 0, 0);
  return c.toDataURL("image/png");
}

// The inverse: a mask canvas from a saved mask PNG (luminance or alpha).
function maskFromDataUrl(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = newMask();
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0, c.width, c.height);
      const im = ctx.getImageData(0, 0, c.width, c.height);
      const d = im.data;
      for (let i = 0; i < d.length; i += 4) {
        const lum = (d[i] + d[i + 1] + d[i + 2]) / 3;
        const a = d[i + 3] < 255 ? d[i + 3] : lum;
        d[i] = d[i + 1] = d[i + 2] = 255;
        d[i + 3] = a;
      }
      ctx.putImageData(im, 0, 0);
      resolve(c);
    };
    img.onerror = () => reject(new Error("cannot read a mask of the edit"));
    img.src = url;
  });
}

function selectionJson(sel) {
  return { seed: sel.seed, mask: maskDataUrl(sel.mask) };
}

function tinted(mask, color, alpha) {
  const c = newMask();
  const ctx = c.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = `rgba(${color[0]},${color[1]},${color[2]},${alpha})`;
  ctx.fillRect(0, 0, c.width, c.height);
  return c;
}

// --- input checks: the bounds come from /api/info (the config dataclasses' fields), one source for both -----
// Seeds as the server reads them (latents.parse_seeds): "0-15", "3,7,12", "0-7, 20"; an error message or a list.
function parseSeeds(text, limit) {
  const parts = String(text).split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length) return { error: "give seeds as a range or list, e.g. 0-15 or 3,7,12" };
  let count = 0;
  const seeds = [];
  for (const part of parts) {
    const m = /^(\d+)\s*(?:-\s*(\d+))?$/.exec(part);
    if (!m) return { error: `cannot read “${part}”: use ranges like 0-15 and lists like 3,7,12` };
    const lo = Number(m[1]), hi = m[2] !== undefined ? Number(m[2]) : lo;
    if (hi < lo) return { error: `${part} runs backwards; write ${hi}-${lo}` };
    if (hi > app.info.max_seed) return { error: `seeds must be at most ${app.info.max_seed}` };
    count += hi - lo + 1;
    if (count > limit) return { error: `names more than ${limit} images; choose a smaller range` };
    for (let s = lo; s <= hi && seeds.length <= 4096; s++) seeds.push(s);
  }
  return { seeds, count };
}

function checkNumber(text, bounds, integer) {
  const t = String(text).trim();
  if (t === "") return "required";
  const v = Number(t);
  if (!Number.isFinite(v)) return "not a number";
  if (integer && !Number.isInteger(v)) return "a whole number";
  const hi = bounds.le;
  if (bounds.ge !== undefined && v < bounds.ge) return `at least ${bounds.ge}`;
  if (bounds.gt !== undefined && v <= bounds.gt) return `more than ${bounds.gt}`;
  if (hi !== undefined && v > hi) return `at most ${hi}`;
  return "";
}

const CHECKS = {
  rank: (v) => checkNumber(v, app.info.bounds.keys.rank, true),
  steps: (v) => checkNumber(v, app.info.bounds.update.steps, true),
  lr: (v) => checkNumber(v, app.info.bounds.update.lr, false),
  seeds: (v) => parseSeeds(v, app.info.max_gallery).error || "",
  "search-seeds": (v) => parseSeeds(v, app.info.max_search).error || "",
  "save-name": (v) => (v.trim() === "" || new RegExp(`^(?:${app.info.name_pattern})$`).test(v.trim().replace(/\.json$/, "")) ? "" :
    "1-80 letters, digits, _ - or ., starting with a letter or digit"),
};

const INPUT_NAMES = { rank: "Rank", steps: "Steps", lr: "Learning rate", seeds: "Seeds", "search-seeds": "Search seeds",
  "save-name": "Name" };

// Check an input now (and mark it); returns whether it is valid.
function validate(id) {
  const el = $(`#${id}`);
  const msg = CHECKS[id](el.value);
  app.errors[id] = msg;
  el.setAttribute("aria-invalid", msg ? "true" : "false");
  const out = $(`#${id}-error`);
  if (out) out.textContent = msg ? `${INPUT_NAMES[id]}: ${msg}` : "";
  return !msg;
}

function applyBounds() {
  const set = (id, b) => {
    const el = $(`#${id}`);
    if (b.ge !== undefined) el.min = b.ge;
    if (b.gt !== undefined) el.min = b.gt;
    if (b.le !== undefined) el.max = b.le;
  };
  set("rank", app.info.bounds.keys.rank);
  set("steps", app.info.bounds.update.steps);
  set("lr", app.info.bounds.update.lr);
  for (const id of Object.keys(CHECKS)) {
    $(`#${id}`).addEventListener("input", () => { validate(id); syncControls(); });
    validate(id);
  }
}

// --- the draft and what is missing from it ---------------------------------------------------
function draftProblem() {
  const d = app.draft;
  if (!d.paste && !d.copy && !$("#erase").checked) return "paint a copy region first (Copy tool, key 1)";
  if (!d.copy && !$("#erase").checked) return "paint a copy region (Copy tool, key 1), or turn on erase mode";
  if (!d.paste) return "paint where to paste (Paste tool, key 2)";
  return null;
}

function settingsProblem() {
  for (const id of ["rank", "steps", "lr"]) if (app.errors[id]) return `${id}: ${app.errors[id]}`;
  return null;
}

// --- every control's state, from the server's (history, job) and the page's inputs ----------------------
function syncControls() {
  const running = !!runningJob();
  const h = app.history;
  const draft = draftProblem(), settings = settingsProblem();
  document.body.classList.toggle("running", running);
  $("#execute").hidden = running;
  $("#cancel").hidden = !running;
  for (const id of ["execute", "suggest"]) {
    const el = $(`#${id}`);
    el.disabled = running || !!draft || !!settings;
    el.setAttribute("aria-disabled", el.disabled ? "true" : "false");
  }
  $("#execute").title = draft || settings || "solve the edit and apply it to the model (Ctrl+Enter)";
  $("#undo").disabled = running || !h.entries.length;
  $("#redo").disabled = running || !h.undone.length;
  $("#revert").disabled = running || !h.entries.length;
  $$("#history button, #together button").forEach((b) => { b.disabled = running; });
  $$("#saved-list button.load").forEach((b) => { b.disabled = running || b.dataset.compatible !== "1"; });
  syncSaveChoices();
  const what = $("#save-what").value;
  $("#save").disabled = running || !what || !$("#save-name").value.trim() || !!app.errors["save-name"] ||
    (what === "draft" && !!draft);
  $("#search").disabled = running || !searchRegion().length || !!app.errors["search-seeds"];
  $("#clear").disabled = !hasPaint(app.tool);
  updateNextStep();
}

function hasPaint(role) {
  return role === "context" ? app.draft.context.size > 0 : !!app.draft[role];
}
