// Part 7: the guide and the next step, the layer's description, keyboard shortcuts, and setting up the page.
"use strict";

const GUIDE_SEEN = "model-rewrite.guide-seen";

function describeLayer() {
  const l = app.info.layers.find((x) => x.name === $("#layer").value);
  if (!l) return;
  $("#layer-desc").textContent = `${l.name}: reads keys on a ${l.key_resolution}×${l.key_resolution} grid of ${l.key_size} ` +
    `channels and writes ${l.value_shape[0]} channels at ${l.resolution}×${l.resolution}` +
    `${l.name === app.info.default_layer ? " (the default: about a quarter of the image side)" : ""}.`;
}

// What the user should do next, from the draft and the server's state: always shown, never replaced by messages.
function updateNextStep() {
  if (!app.info) return;
  const d = app.draft, h = app.history, j = runningJob();
  let text;
  if (j) text = `Wait for ${jobWords(j)}, or Cancel it. You can keep browsing; what needs the model runs when it ends.`;
  else if (!d.copy && !d.paste && !$("#erase").checked) text = "1. Choose Copy (key 1) and paint over something on an image, e.g. an eye.";
  else if (!d.copy && !$("#erase").checked) text = "1. Paint a copy region (Copy, key 1), or turn on erase mode in Advanced.";
  else if (!d.paste) text = "2. Choose Paste (key 2) and paint where it should go on another image.";
  else if (!d.context.size) text = "3. Optional: Context (key 3) on a few images where the rule should apply, then Execute (Ctrl+Enter).";
  else text = `Ready: Execute (Ctrl+Enter) applies the edit${$("#live").checked ? "; the gallery shows its live preview" : ""}.`;
  if (!j && h.entries.length && !d.copy && !d.paste) text += ` (${h.entries.length} edit${h.entries.length > 1 ? "s" : ""} applied: see History.)`;
  $("#next-step").textContent = text;
  document.body.classList.toggle("first-run", !d.copy && !d.paste && !h.entries.length);
}

function toggleGuide(open) {
  const g = $("#guide");
  const show = open === undefined ? g.hidden : open;
  g.hidden = !show;
  $("#guide-button").setAttribute("aria-expanded", String(show));
  if (!show) localStorage.setItem(GUIDE_SEEN, "1");
}

// Layer, rank or a solve setting changed: what depends on them follows.
function settingsChanged() {
  describeLayer();
  app.draftVersion += 1;
  updatePreview();
  updateSpectrum();
  if ($("#show-matches").checked) showMatches();
  scheduleLive();
  syncControls();
}

// Keys work wherever the focus is, except while typing in a text field (radios, checkboxes and sliders pass them).
function typing(target) {
  return target.matches("textarea, select, input:not([type=radio]):not([type=checkbox]):not([type=range])");
}

function onKey(e) {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (!$("#execute").disabled) execute();
    return;
  }
  if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
  const tools = { 1: "copy", 2: "paste", 3: "context" };
  if (tools[e.key]) setTool(tools[e.key]);
  else if (e.key === "t") setView(app.view === "edited" ? "original" : "edited");
  else if (e.key === "h") $("#show-regions").click();
  else if (e.key === "e") $("#eraser").click();
  else if (e.key === "?") toggleGuide();
  else if (e.key === "[" || e.key === "]") {
    const b = $("#brush");
    b.value = Number(b.value) + (e.key === "]" ? 1 : -1);
    $("#brush-out").textContent = b.value;
  } else return;
  e.preventDefault();
}

async function init() {
  const info = await guarded(() => api("GET", "/api/info"));
  if (!info) return;
  app.info = info;
  app.res = info.resolution;
  app.draftVersion = 0;
  $("#model-info").textContent = `${info.model} · ${info.resolution}px · ${info.fingerprint}`;
  $("#model-info").title = $("#model-info").textContent;
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
  $("#zoom").value = parseInt(getComputedStyle(document.documentElement).getPropertyValue("--cell"), 10) || 176;
  applyBounds();

  sel.addEventListener("change", settingsChanged);
  $("#rank").addEventListener("change", () => { if (validate("rank")) settingsChanged(); });
  for (const id of ["steps", "lr"]) $(`#${id}`).addEventListener("change", () => { if (validate(id)) { app.draftVersion += 1; syncControls(); } });
  $("#erase").addEventListener("change", () => { app.draftVersion += 1; scheduleLive(); syncControls(); });
  $$("input[name=tool]").forEach((r) => r.addEventListener("change", () => setTool(r.value)));
  document.body.dataset.tool = app.tool;
  $("#brush").addEventListener("input", () => { $("#brush-out").textContent = $("#brush").value; });
  $("#clear").addEventListener("click", clearTool);
  $("#show-regions").addEventListener("change", () => document.body.classList.toggle("hide-regions", !$("#show-regions").checked));
  $("#live").addEventListener("change", () => { scheduleLive(); syncControls(); });
  $("#zoom").addEventListener("input", () => document.documentElement.style.setProperty("--cell", `${$("#zoom").value}px`));
  $$("input[name=view]").forEach((r) => r.addEventListener("change", () => setView(r.value)));
  $("#seeds").addEventListener("change", () => { app.page = 0; loadGallery(); });
  $("#seeds").addEventListener("keydown", (e) => { if (e.key === "Enter") { app.page = 0; loadGallery(); } });
  $("#per-page").addEventListener("change", () => { app.page = 0; loadGallery(); });
  $("#prev").addEventListener("click", () => { if (app.page > 0) { app.page -= 1; loadGallery(); } });
  $("#next").addEventListener("click", () => { if (app.gallery && app.page < app.gallery.pages - 1) { app.page += 1; loadGallery(); } });
  $("#execute").addEventListener("click", () => execute());
  $("#suggest").addEventListener("click", suggestLayers);
  $("#cancel").addEventListener("click", () => guarded(() => api("POST", "/api/job/cancel")));
  $("#undo").addEventListener("click", () => historyAction("POST", "/api/history/undo"));
  $("#redo").addEventListener("click", () => historyAction("POST", "/api/history/redo"));
  $("#revert").addEventListener("click", () => historyAction("POST", "/api/history/revert"));
  $("#search").addEventListener("click", search);
  $("#search-by").addEventListener("change", syncControls);
  $("#show-results").addEventListener("click", () => { $("#seeds").value = app.searchResults.map((m) => m.seed).join(","); app.page = 0; loadGallery(); });
  $("#show-matches").addEventListener("change", showMatches);
  $("#quantile").addEventListener("input", () => { $("#quantile-out").textContent = Number($("#quantile").value).toFixed(3); });
  $("#quantile").addEventListener("change", showMatches);
  $("#save").addEventListener("click", save);
  $("#save-what").addEventListener("change", () => { $("#save-what").dataset.chosen = $("#save-what").value; syncControls(); });
  $("#save-name").addEventListener("keydown", (e) => { if (e.key === "Enter" && !$("#save").disabled) save(); });
  $("#import-button").addEventListener("click", () => $("#import").click());
  $("#import").addEventListener("change", (e) => { if (e.target.files[0]) importFile(e.target.files[0]); e.target.value = ""; });
  $("#guide-button").addEventListener("click", () => toggleGuide());
  $("#guide-close").addEventListener("click", () => { toggleGuide(false); $("#guide-button").focus(); });
  document.addEventListener("keydown", onKey);

  renderTray();
  await Promise.all([loadGallery(), refreshHistory(), refreshSaved()]);
  await watchJob();
  if (!localStorage.getItem(GUIDE_SEEN)) toggleGuide(true); // the first visit opens the guide
  syncControls();
  document.body.dataset.ready = "1";
  say("ready");
}

document.addEventListener("DOMContentLoaded", init);
