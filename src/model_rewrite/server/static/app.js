// model-rewrite web page: paint copy / paste / context regions on generated images, execute the edit,
// and browse its effect. The page's state is an EditSpec draft; every action goes through the JSON API.
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
  job: null,
  polling: false,
  searchSeeds: [],
  historyEntries: [],
  loadedUpdate: {}, // UpdateConfig fields of the last loaded edit
  loadedKeys: {}, // its KeyConfig
  loadedStats: null, // its StatsConfig
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
    throw err;
  }
  return data;
}

function say(text, kind = "info") {
  const el = $("#message");
  el.textContent = text;
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

function masksOf(seed) {
  const out = [];
  if (app.draft.copy && app.draft.copy.seed === seed) out.push(["copy", app.draft.copy.mask]);
  if (app.draft.paste && app.draft.paste.seed === seed) out.push(["paste", app.draft.paste.mask]);
  if (app.draft.context.has(seed)) out.push(["context", app.draft.context.get(seed)]);
  return out;
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

function drawOverlay(canvas, seed) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const [role, mask] of masksOf(seed)) ctx.drawImage(tinted(mask, ROLE_COLORS[role], 0.5), 0, 0);
}

function redrawSeed(seed) {
  for (const c of $$(`#gallery .card[data-seed="${seed}"] canvas.paint`)) drawOverlay(c, seed);
  const card = $(`#gallery .card[data-seed="${seed}"]`);
  if (card) {
    const roles = masksOf(seed).map(([r]) => r);
    card.querySelector(".badges").textContent = roles.join(" · ");
  }
}

// --- painting -------------------------------------------------------------------------------
function maskFor(role, seed, creating) {
  const d = app.draft;
  if (role === "context") {
    if (!d.context.has(seed) && creating) d.context.set(seed, newMask());
    return d.context.get(seed) || null;
  }
  const cur = d[role];
  if (cur && cur.seed === seed) return cur.mask;
  if (!creating) return null;
  const old = cur ? cur.seed : null;
  d[role] = { seed, mask: newMask() }; // one copy and one paste region: painting elsewhere starts anew
  if (old !== null) redrawSeed(old);
  return d[role].mask;
}

function attachPainter(canvas, seed) {
  let last = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * app.res, ((e.clientY - r.top) / r.height) * app.res];
  };
  const stroke = (a, b) => {
    const eraser = $("#eraser").checked;
    const mask = maskFor(app.tool, seed, !eraser);
    if (!mask) return;
    const ctx = mask.getContext("2d");
    ctx.save();
    ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    ctx.lineWidth = Number($("#brush").value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0] + 0.01, b[1]);
    ctx.stroke();
    ctx.restore();
    redrawSeed(seed);
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = pos(e);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = pos(e);
    stroke(last, p);
    last = p;
  });
  const end = () => {
    if (!last) return;
    last = null;
    strokeDone(app.tool, seed);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

function strokeDone(role, seed) {
  const d = app.draft;
  if (role === "context" && d.context.has(seed) && maskIsEmpty(d.context.get(seed))) d.context.delete(seed);
  if ((role === "copy" || role === "paste") && d[role] && maskIsEmpty(d[role].mask)) d[role] = null;
  redrawSeed(seed);
  if (role === "context") renderTray();
  else updatePreview();
}

function clearTool() {
  const d = app.draft;
  const seeds = [];
  if (app.tool === "context") {
    seeds.push(...d.context.keys());
    d.context.clear();
    renderTray();
  } else if (d[app.tool]) {
    seeds.push(d[app.tool].seed);
    d[app.tool] = null;
    updatePreview();
  }
  seeds.forEach(redrawSeed);
}

// --- previews and the context tray ------------------------------------------------------------
let previewSeq = 0;
async function updatePreview() {
  const d = app.draft;
  const seq = ++previewSeq;
  $("#copy-info").textContent = d.copy ? `seed ${d.copy.seed}` : "";
  $("#paste-info").textContent = d.paste ? `seed ${d.paste.seed}` : "";
  if (!d.copy) {
    $("#copy-preview").removeAttribute("src");
    $("#paste-preview").removeAttribute("src");
    $("#rendered-preview").removeAttribute("src");
    $("#paste-box").hidden = true;
    return;
  }
  const body = { copy: selectionJson(d.copy) };
  if (d.paste) Object.assign(body, { paste: selectionJson(d.paste), layer: $("#layer").value });
  const out = await guarded(() => api("POST", "/api/preview", body));
  if (!out || seq !== previewSeq) return;
  $("#copy-preview").src = out.copy;
  if (out.composite) {
    $("#paste-preview").src = out.composite;
    const [y0, y1, x0, x1] = out.paste_box;
    const box = $("#paste-box");
    const f = 100 / app.res;
    Object.assign(box.style, { top: `${y0 * f}%`, height: `${(y1 - y0) * f}%`, left: `${x0 * f}%`, width: `${(x1 - x0) * f}%` });
    box.hidden = false;
  } else {
    $("#paste-preview").removeAttribute("src");
    $("#paste-box").hidden = true;
  }
  // what the edit can reach: the goal features drawn by the layers after the chosen one
  if (out.rendered) $("#rendered-preview").src = out.rendered; else $("#rendered-preview").removeAttribute("src");
  $("#rendered-layer").textContent = out.rendered ? body.layer : "";
}

function thumb(seed, mask, url) {
  const c = document.createElement("canvas");
  c.width = c.height = app.res;
  c.className = "thumb";
  const img = new Image();
  img.onload = () => {
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0, c.width, c.height);
    if (mask) ctx.drawImage(tinted(mask, ROLE_COLORS.context, 0.55), 0, 0);
  };
  img.src = url;
  return c;
}

function imageUrl(seed) {
  const g = app.gallery;
  const hit = g && g.images.find((im) => im.seed === seed);
  return hit ? hit.edited : `/api/images/${g ? g.state : "none"}/${seed}.png`;
}

function renderTray() {
  const tray = $("#context-tray");
  tray.textContent = "";
  for (const [seed, mask] of app.draft.context) {
    const item = document.createElement("div");
    item.className = "tray-item";
    item.dataset.seed = seed;
    item.appendChild(thumb(seed, mask, imageUrl(seed)));
    const label = document.createElement("span");
    label.textContent = seed;
    const rm = document.createElement("button");
    rm.className = "remove";
    rm.title = `remove seed ${seed} from the context`;
    rm.textContent = "×";
    rm.addEventListener("click", () => {
      app.draft.context.delete(seed);
      redrawSeed(seed);
      renderTray();
    });
    item.append(label, rm);
    tray.appendChild(item);
  }
  const n = app.draft.context.size;
  $("#context-count").textContent = n ? `(${n} image${n > 1 ? "s" : ""})` : "(none: the paste region)";
  if ($("#show-matches").checked) showMatches();
}

// --- gallery ----------------------------------------------------------------------------------
function galleryQuery(which) {
  const p = new URLSearchParams({ seeds: $("#seeds").value, page: app.page, per_page: $("#per-page").value, which });
  return `/api/gallery?${p}`;
}

let gallerySeq = 0;
async function loadGallery() {
  const which = app.view === "both" ? "both" : app.view;
  const seq = ++gallerySeq;
  const g = await guarded(() => api("GET", galleryQuery(which)));
  if (!g || seq !== gallerySeq) return; // a later request supersedes this one
  app.gallery = g;
  app.page = g.page;
  $("#page-info").textContent = `page ${g.page + 1} / ${g.pages} · ${g.total} images`;
  const key = JSON.stringify([g.state, g.seeds, app.view]);
  const root = $("#gallery");
  if (key === root.dataset.key) return; // the same images: keep the cards (and any stroke in progress)
  root.dataset.key = key;
  root.textContent = "";
  const views = app.view === "both" ? ["original", "edited"] : [app.view];
  root.classList.toggle("both", app.view === "both");
  for (const im of g.images) {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.seed = im.seed;
    const row = document.createElement("div");
    row.className = "views";
    for (const which of views) {
      const cell = document.createElement("div");
      cell.className = `view ${which}`;
      const img = document.createElement("img");
      img.src = im[which];
      img.alt = `seed ${im.seed} (${which})`;
      img.dataset.which = which;
      img.draggable = false;
      const canvas = document.createElement("canvas");
      canvas.className = "paint";
      canvas.width = canvas.height = app.res;
      drawOverlay(canvas, im.seed);
      attachPainter(canvas, im.seed);
      cell.append(img, canvas);
      if (views.length > 1) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = which;
        cell.appendChild(tag);
      }
      row.appendChild(cell);
    }
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<span>seed ${im.seed}</span> <span class="badges"></span>`;
    card.append(row, cap);
    root.appendChild(card);
    redrawSeed(im.seed);
  }
  root.dataset.state = g.state;
  root.dataset.view = app.view;
  if ($("#show-matches").checked) await showMatches();
}

function setView(view) {
  app.view = view;
  const radio = $(`input[name=view][value=${view}]`);
  if (radio) radio.checked = true;
  loadGallery();
}

// --- context search and match overlays --------------------------------------------------------------
function contextJson() {
  const ctx = [...app.draft.context].map(([seed, mask]) => ({ seed, mask: maskDataUrl(mask) }));
  if (!ctx.length && app.draft.paste) ctx.push(selectionJson(app.draft.paste));
  return ctx;
}

async function search() {
  const context = contextJson();
  if (!context.length) return say("paint a context region (or a paste region) first", "error");
  say("searching…");
  const out = await guarded(() => api("POST", "/api/search", {
    layer: $("#layer").value, context, ...directionConfigs(), seeds: $("#search-seeds").value, top_k: 12,
  }));
  if (!out) return;
  const root = $("#search-results");
  root.textContent = "";
  app.searchSeeds = out.matches.map((m) => m.seed);
  for (const m of out.matches) {
    const item = document.createElement("div");
    item.className = "tray-item";
    item.dataset.seed = m.seed;
    const img = document.createElement("img");
    img.src = m.url;
    img.className = "thumb";
    img.title = `seed ${m.seed}: score ${m.score.toFixed(3)}`;
    const label = document.createElement("span");
    label.textContent = m.seed;
    item.append(img, label);
    root.appendChild(item);
  }
  $("#show-results").hidden = !out.matches.length;
  say(`best ${out.matches.length} of ${out.searched} samples by the context direction`);
}

let matchSeq = 0;
async function showMatches() {
  const seq = ++matchSeq;
  const on = $("#show-matches").checked;
  const restore = () => $$("#gallery img").forEach((img) => {
    const im = app.gallery && app.gallery.images.find((x) => String(x.seed) === img.closest(".card").dataset.seed);
    if (im) img.src = im[img.dataset.which];
  });
  if (!on || !app.gallery) return restore();
  const context = contextJson();
  if (!context.length) {
    say("Show matches needs a context (or paste) region", "error");
    return restore();
  }
  const which = app.view === "original" ? "original" : "edited";
  const out = await guarded(() => api("POST", "/api/matches", {
    layer: $("#layer").value, context, ...directionConfigs(), seeds: app.gallery.seeds,
    quantile: Number($("#quantile").value), which,
  }));
  if (!out || seq !== matchSeq || !$("#show-matches").checked) return;
  for (const o of out.overlays) {
    const img = $(`#gallery .card[data-seed="${o.seed}"] img[data-which="${which}"]`);
    if (img) img.src = o.image;
  }
  say(`context fires above ${out.threshold.toFixed(3)} (quantile ${out.quantile})`);
}

// --- executing and jobs -------------------------------------------------------------------------
// Settings of a loaded edit that the page has no control for are kept, so re-executing it changes nothing else.
function updateConfig() {
  return {
    ...app.loadedUpdate, steps: Number($("#steps").value), lr: Number($("#lr").value), erase: $("#erase").checked,
  };
}

// What defines the context directions (KeyConfig and StatsConfig): the same for Execute, Search and matches.
function directionConfigs() {
  return {
    keys: { ...app.loadedKeys, rank: Number($("#rank").value) },
    ...(app.loadedStats ? { stats: app.loadedStats } : {}),
  };
}

function draftJson() {
  const d = app.draft;
  if (!d.paste) throw new Error("paint where to paste (Paste tool) first");
  if (!d.copy && !$("#erase").checked) throw new Error("paint a copy region (Copy tool), or turn on erase mode");
  const name = $("#edit-name").value.trim() ||
    (d.copy ? `copy ${d.copy.seed} to ${d.paste.seed}` : `erase on ${d.paste.seed}`) + ` (${$("#layer").value})`;
  return {
    layer: $("#layer").value, name, paste: selectionJson(d.paste), copy: d.copy ? selectionJson(d.copy) : null,
    context: [...d.context].map(([seed, mask]) => ({ seed, mask: maskDataUrl(mask) })), update: updateConfig(),
    ...directionConfigs(),
  };
}

async function suggestLayers() {
  let body;
  try { body = draftJson(); } catch (err) { return say(err.message, "error"); }
  const job = await guarded(() => api("POST", "/api/suggest", body));
  if (job) followJob(job);
}

// The table of a finished suggest job: one row per layer and rank, best first, each with a button that
// takes its layer and rank for the next Execute.
function showSuggestions(rows) {
  const root = $("#suggestions");
  const body = root.querySelector("tbody");
  body.textContent = "";
  const num = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.layer = r.layer;
    tr.dataset.rank = r.rank;
    for (const v of [r.layer, r.rank, num(r.score), num(r.transfer), num(r.paste_fidelity), num(r.locality, 1),
                     num(r.collateral, 3)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    if (r.score !== null) {
      const use = document.createElement("button");
      use.className = "use";
      use.textContent = "Use";
      use.title = `edit at layer ${r.layer} with rank ${r.rank}`;
      use.addEventListener("click", () => {
        $("#layer").value = r.layer;
        $("#rank").value = r.rank;
        describeLayer();
        say(`layer ${r.layer}, rank ${r.rank}: press Execute to apply the edit there`);
      });
      td.appendChild(use);
    } else {
      td.textContent = r.error;
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
  root.hidden = !rows.length;
}

async function execute() {
  let body;
  try { body = draftJson(); } catch (err) { return say(err.message, "error"); }
  const job = await guarded(() => api("POST", "/api/execute", body));
  if (job) followJob(job);
}

// What the finished job's edit did (the job's `report`, from the library's quality_report): one line per
// figure with its verdict (paste fidelity, transfer, locality, collateral).
function reportText(r) {
  return `How the edit took on ${r.heldout_seeds.length} held-out images:\n` + r.lines.join("\n");
}

function showReport(j) {
  const el = $("#edit-report");
  const r = j && j.state === "done" ? j.report : null;
  el.hidden = !(r || (j && j.state === "done" && j.error));
  el.classList.toggle("error", !r);
  el.textContent = r ? reportText(r) : (j && j.error) || "";
  el.title = r ? `${r.name} (${r.layer}): seeds ${r.heldout_seeds[0]}-${r.heldout_seeds[r.heldout_seeds.length - 1]}, ` +
    `the rule fires on ${(100 * r.fire_fraction).toFixed(1)} % of the pixels (heat above its ${r.quantile} quantile)` : "";
}

function setRunning(running) {
  document.body.classList.toggle("running", running);
  $("#cancel").hidden = !running;
  for (const id of ["execute", "suggest", "undo", "redo", "revert", "search", "save"]) $(`#${id}`).disabled = running;
}

async function followJob(job) {
  app.job = { ...job, losses: job.losses.slice() };
  showReport(null);
  setRunning(true);
  if (app.polling) return;
  app.polling = true;
  try {
    while (true) {
      const j = app.job;
      drawJob(j);
      if (j.state !== "running") break;
      await new Promise((r) => setTimeout(r, 120));
      const out = await api("GET", `/api/job?since=${j.losses.length}`).catch(() => null);
      if (out && out.job && out.job.id === j.id) {
        app.job = { ...out.job, losses: j.losses.concat(out.job.losses) };
      } else if (out && out.job) {
        app.job = { ...out.job };
      }
    }
  } finally {
    app.polling = false;
    setRunning(false);
  }
  const j = app.job;
  if (j.state === "done" && j.kind === "suggest") {
    const best = j.suggestions[0];
    say(`tried ${j.suggestions.length} layers and ranks in ${j.seconds.toFixed(1)} s; best: ${best.layer}, rank ${best.rank}`);
    showSuggestions(j.suggestions);
  } else if (j.state === "done") {
    say(`applied ${j.name} in ${j.seconds.toFixed(1)} s`);
    showReport(j);
    await refreshHistory();
    setView(app.view === "original" ? "edited" : app.view);
  } else if (j.state === "cancelled") {
    say("the edit was cancelled; the model is unchanged");
  } else {
    say(j.error || "the edit failed", "error");
  }
}

function drawJob(j) {
  const status = j.state === "running"
    ? (j.phase === "solving" ? `step ${j.step} / ${j.steps}` : `${j.phase} ${j.steps ? `${j.step}/${j.steps}` : ""}`)
    : j.state;
  const last = j.losses.length ? ` · loss ${j.losses[j.losses.length - 1].toFixed(4)}` : "";
  $("#job-status").textContent = `${status}${last}`;
  $("#job-status").dataset.state = j.state;
  const c = $("#loss");
  c.hidden = false;
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const ls = j.losses;
  if (ls.length < 2) return;
  const lo = Math.min(...ls), hi = Math.max(...ls), span = hi - lo || 1;
  const n = Math.max(j.steps, ls.length - 1) || 1;
  ctx.strokeStyle = "#d04020";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ls.forEach((v, i) => {
    const x = 2 + (i / n) * (c.width - 4), y = 3 + (1 - (v - lo) / span) * (c.height - 6);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// --- history ------------------------------------------------------------------------------------
async function refreshHistory() {
  const h = await guarded(() => api("GET", "/api/history"));
  if (!h) return;
  app.historyEntries = h.entries;
  const root = $("#history");
  root.textContent = "";
  for (const e of h.entries) {
    const li = document.createElement("li");
    li.dataset.id = e.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `${e.name}`;
    name.title = `${e.layer}, rank ${e.rank}`;
    const show = document.createElement("button");
    show.textContent = "show";
    show.title = "put this edit's regions back in the page";
    show.addEventListener("click", () => e.edit && showEdit(e.edit));
    const rm = document.createElement("button");
    rm.className = "remove";
    rm.textContent = "remove";
    rm.addEventListener("click", () => historyAction("DELETE", `/api/history/${e.id}`));
    li.append(name, show, rm);
    root.appendChild(li);
  }
  for (const e of h.undone) {
    const li = document.createElement("li");
    li.className = "undone";
    li.textContent = `${e.name} (undone)`;
    root.appendChild(li);
  }
  $("#undo").disabled = !h.entries.length;
  $("#redo").disabled = !h.undone.length;
  $("#revert").disabled = !h.entries.length;
}

async function historyAction(method, url) {
  const h = await guarded(() => api(method, url));
  if (!h) return;
  showReport(null); // it described the model as the last job left it
  await refreshHistory();
  await loadGallery();
}

// --- saving, loading, export --------------------------------------------------------------------
async function refreshSaved() {
  const out = await guarded(() => api("GET", "/api/edits"));
  if (!out) return;
  const root = $("#saved-list");
  root.textContent = "";
  for (const e of out.edits) {
    const li = document.createElement("li");
    li.dataset.name = e.name;
    if (!e.compatible) {
      li.className = e.readable ? "incompatible" : "incompatible unreadable";
      li.title = e.error;
    }
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = e.readable ? e.name : `${e.name} (unreadable)`;
    name.title = e.compatible ? `${e.layer}${e.has_factors ? ", solved" : ", solved when loaded"}` : e.error;
    const load = document.createElement("button");
    load.className = "load";
    load.dataset.name = e.name;
    load.textContent = "load";
    load.disabled = !e.compatible;
    load.addEventListener("click", () => loadEdit(e.name));
    const dl = document.createElement("a");
    dl.href = `/api/edits/${encodeURIComponent(e.name)}/file`;
    dl.textContent = "json";
    dl.setAttribute("download", `${e.name}.json`);
    li.append(name, load, dl);
    root.appendChild(li);
  }
}

async function save() {
  const name = $("#save-name").value.trim();
  if (!name) return say("give the edit a name to save it under", "error");
  const body = { name, overwrite: $("#overwrite").checked };
  if (!app.historyEntries.length) {
    try { body.edit = draftJson(); } catch (err) { return say(`nothing applied to save, and the draft is incomplete: ${err.message}`, "error"); }
  }
  const out = await guarded(() => api("POST", "/api/edits", body));
  if (!out) return;
  say(`saved ${out.name} ${out.has_factors ? "(with its solved factors)" : "(draft: solved when loaded)"}`);
  await refreshSaved();
}

async function showEdit(edit) {
  const d = app.draft;
  const mask = (s) => maskFromDataUrl(s.mask).then((m) => ({ seed: s.seed, mask: m }));
  const [paste, copy, ...context] = await Promise.all([edit.paste ? mask(edit.paste) : null, edit.copy ? mask(edit.copy) : null, ...edit.context.map(mask)]);
  d.paste = paste;
  d.copy = copy;
  d.context = new Map(context.map((s) => [s.seed, s.mask]));
  if (app.info.layers.some((l) => l.name === edit.layer)) $("#layer").value = edit.layer;
  describeLayer();
  const u = edit.update || {};
  const k = edit.keys || {};
  app.loadedUpdate = { ...u };
  app.loadedKeys = { ...k };
  app.loadedStats = edit.stats ? { ...edit.stats } : null;
  if (k.rank !== undefined) $("#rank").value = k.rank;
  if (u.steps !== undefined) $("#steps").value = u.steps;
  if (u.lr !== undefined) $("#lr").value = u.lr;
  $("#erase").checked = !!u.erase;
  $("#edit-name").value = edit.name || "";
  const seeds = [...new Set([...(paste ? [paste.seed] : []), ...(copy ? [copy.seed] : []), ...context.map((s) => s.seed)])];
  $("#seeds").value = seeds.join(",");
  app.page = 0;
  renderTray();
  await loadGallery();
  await updatePreview();
}

async function loadEdit(name) {
  const out = await guarded(() => api("POST", `/api/edits/${encodeURIComponent(name)}/load`, { apply: true }));
  if (!out) return;
  await showEdit(out.edit);
  if (out.job) {
    say(`solving ${name}…`);
    followJob(out.job);
  } else {
    say(`loaded ${name}`);
    await refreshHistory();
    await loadGallery();
  }
}

async function importFile(file) {
  let edit;
  try { edit = JSON.parse(await file.text()); } catch (err) { return say(`${file.name} is not JSON: ${err.message}`, "error"); }
  const name = file.name.replace(/\.json$/i, "").replace(/[^A-Za-z0-9_.-]/g, "_");
  const out = await guarded(() => api("POST", "/api/edits/import", { name, edit, overwrite: $("#overwrite").checked }));
  if (out) {
    say(`imported ${out.name}; load it to apply`);
    await refreshSaved();
  }
}

// --- set-up ----------------------------------------------------------------------------------------
function describeLayer() {
  const l = app.info.layers.find((x) => x.name === $("#layer").value);
  if (!l) return;
  $("#layer-desc").textContent = `keys ${l.key_resolution}×${l.key_resolution}×${l.key_size} → values ` +
    `${l.value_shape.slice(1).join("×")}×${l.value_shape[0]}`;
  $("#layer-desc").title = `${l.kind}: key grid ${l.key_resolution}×${l.key_resolution} of ${l.key_size} channels, ` +
    `value grid ${l.resolution}×${l.resolution} of ${l.value_shape[0]} channels`;
}

async function init() {
  const info = await guarded(() => api("GET", "/api/info"));
  if (!info) return;
  app.info = info;
  app.res = info.resolution;
  $("#model-info").textContent = `${info.model} · ${info.resolution}px · ${info.fingerprint}`;
  const sel = $("#layer");
  for (const l of info.layers) {
    const o = document.createElement("option");
    o.value = l.name;
    o.textContent = `${l.name} (${l.key_resolution}×${l.key_resolution}, ${l.key_size} ch)`;
    sel.appendChild(o);
  }
  sel.value = info.default_layer;
  describeLayer();
  $("#rank").value = info.keys.rank;
  for (const k of ["steps", "lr"]) $(`#${k}`).value = info.update[k];
  $("#erase").checked = info.update.erase;
  $("#quantile").value = info.fire_quantile;
  $("#quantile-out").textContent = Number(info.fire_quantile).toFixed(3);

  sel.addEventListener("change", () => { describeLayer(); updatePreview(); if ($("#show-matches").checked) showMatches(); });
  $$("input[name=tool]").forEach((r) => r.addEventListener("change", () => { app.tool = r.value; document.body.dataset.tool = r.value; }));
  document.body.dataset.tool = app.tool;
  $("#brush").addEventListener("input", () => { $("#brush-out").textContent = $("#brush").value; });
  $("#clear").addEventListener("click", clearTool);
  $("#show-regions").addEventListener("change", () => document.body.classList.toggle("hide-regions", !$("#show-regions").checked));
  $("#zoom").addEventListener("input", () => document.documentElement.style.setProperty("--cell", `${$("#zoom").value}px`));
  $$("input[name=view]").forEach((r) => r.addEventListener("change", () => setView(r.value)));
  $("#seeds").addEventListener("change", () => { app.page = 0; loadGallery(); });
  $("#per-page").addEventListener("change", () => { app.page = 0; loadGallery(); });
  $("#prev").addEventListener("click", () => { if (app.page > 0) { app.page -= 1; loadGallery(); } });
  $("#next").addEventListener("click", () => { if (app.gallery && app.page < app.gallery.pages - 1) { app.page += 1; loadGallery(); } });
  $("#execute").addEventListener("click", execute);
  $("#suggest").addEventListener("click", suggestLayers);
  $("#cancel").addEventListener("click", () => guarded(() => api("POST", "/api/job/cancel")));
  $("#undo").addEventListener("click", () => historyAction("POST", "/api/history/undo"));
  $("#redo").addEventListener("click", () => historyAction("POST", "/api/history/redo"));
  $("#revert").addEventListener("click", () => historyAction("POST", "/api/history/revert"));
  $("#search").addEventListener("click", search);
  $("#show-results").addEventListener("click", () => { $("#seeds").value = app.searchSeeds.join(","); app.page = 0; loadGallery(); });
  $("#show-matches").addEventListener("change", showMatches);
  $("#quantile").addEventListener("input", () => { $("#quantile-out").textContent = Number($("#quantile").value).toFixed(3); });
  $("#quantile").addEventListener("change", showMatches);
  $("#save").addEventListener("click", save);
  $("#import").addEventListener("change", (e) => { if (e.target.files[0]) importFile(e.target.files[0]); e.target.value = ""; });
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select, textarea")) return;
    if (e.key === "t") setView(app.view === "edited" ? "original" : "edited");
    if (e.key === "h") $("#show-regions").click();
  });

  await Promise.all([loadGallery(), refreshHistory(), refreshSaved()]);
  const status = await api("GET", "/api/job").catch(() => null);
  if (status && status.job && status.job.state === "running") followJob(status.job);
  else if (status && status.job) drawJob(status.job);
  document.body.dataset.ready = "1";
  say("paint a copy region, a paste location and (optionally) context, then Execute");
}

document.addEventListener("DOMContentLoaded", init);
