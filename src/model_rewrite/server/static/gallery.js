// Part 3: the gallery (pages of seeds, edited / original / side by side), what each image shows (the model,
// the live preview or where the context fires), the live preview itself and the match overlays.
"use strict";

const LIVE_DEBOUNCE_MS = 60; // after a stroke ends; a preview in flight is followed by one for the latest draft

function galleryQuery(which) {
  const p = new URLSearchParams({ seeds: $("#seeds").value, page: app.page, per_page: $("#per-page").value, which });
  return `/api/gallery?${p}`;
}

// Whether the gallery shows what its inputs ask for; if not, it is dimmed and a note says why.
function markGallery(stale, why) {
  $("#gallery").classList.toggle("stale", stale);
  const note = $("#gallery-note");
  note.classList.remove("live");
  note.hidden = !stale;
  if (stale) note.textContent = why;
  else paintImages();
}

let gallerySeq = 0;
async function loadGallery() {
  if (!validate("seeds")) return markGallery(true, `The gallery still shows seeds ${app.shownSeeds || ""}: fix the Seeds box.`);
  const which = app.view === "both" ? "both" : app.view;
  const seq = ++gallerySeq;
  const asked = $("#seeds").value;
  const g = await whenFree("gallery", `The gallery will show seeds ${asked}`, () => api("GET", galleryQuery(which)), loadGallery);
  if (seq !== gallerySeq) return; // a later request supersedes this one
  if (!g) {
    if (app.pending.has("gallery")) markGallery(true, `Showing seeds ${app.shownSeeds || "–"}; seeds ${asked} load when the running job ends.`);
    return;
  }
  const stateChanged = !app.gallery || app.gallery.state !== g.state;
  app.gallery = g;
  app.page = g.page;
  app.shownSeeds = asked;
  if (stateChanged) { app.live = null; app.matches = null; refreshTrayThumbs(); }
  $("#page-info").textContent = `page ${g.page + 1} / ${g.pages} · ${g.total} images`;
  $("#prev").disabled = g.page === 0;
  $("#next").disabled = g.page >= g.pages - 1;
  const key = JSON.stringify([g.state, g.seeds, app.view]);
  const root = $("#gallery");
  const changed = key !== root.dataset.key;
  if (changed) buildCards(g);
  root.dataset.key = key;
  root.dataset.state = g.state;
  root.dataset.view = app.view;
  markGallery(false);
  if ($("#show-matches").checked) await showMatches();
  if (changed || !app.live) scheduleLive(); // the live preview follows the images shown
}

function buildCards(g) {
  const root = $("#gallery");
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
      img.alt = `seed ${im.seed} (${which === "edited" ? "current model" : "original model"})`;
      img.dataset.which = which;
      img.draggable = false;
      const canvas = document.createElement("canvas");
      canvas.className = "paint";
      canvas.width = canvas.height = app.res;
      cell.append(img, canvas);
      drawOverlay(canvas, im.seed);
      attachPainter(canvas, im.seed, which);
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = which;
      tag.hidden = views.length === 1;
      const live = document.createElement("span");
      live.className = "tag live-tag";
      live.textContent = "preview";
      live.hidden = true;
      cell.append(tag, live);
      row.appendChild(cell);
    }
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<span>seed ${im.seed}</span> <span class="badges"></span>`;
    card.append(row, cap);
    root.appendChild(card);
    redrawSeed(im.seed);
  }
}

// What each image shows: where the context fires (Show matches), else the live preview (edited view), else the model.
function paintImages() {
  const g = app.gallery;
  if (!g) return;
  const live = app.live && app.live.state === g.state && app.live.version === app.draftVersion ? app.live : null;
  let nLive = 0;
  for (const img of $$("#gallery img")) {
    const seed = Number(img.closest(".card").dataset.seed), which = img.dataset.which;
    const im = g.images.find((x) => x.seed === seed);
    if (!im) continue;
    let src = im[which], isLive = false;
    if (app.matches && app.matches.which === which && app.matches.images.has(seed)) src = app.matches.images.get(seed);
    else if (which === "edited" && live && live.images.has(seed)) { src = live.images.get(seed); isLive = true; }
    if (img.getAttribute("src") !== src) img.src = src;
    img.dataset.live = isLive ? "1" : "";
    img.parentElement.querySelector(".live-tag").hidden = !isLive;
    nLive += isLive;
  }
  $("#gallery").dataset.live = nLive ? String(live.seq) : "";
  const note = $("#gallery-note");
  if (!$("#gallery").classList.contains("stale")) {
    note.hidden = !nLive;
    note.classList.toggle("live", !!nLive);
    if (nLive) note.textContent = `Live preview (tagged “preview”): the closed-form edit at ${live.layer}, not applied ` +
      `(${(live.seconds * 1000).toFixed(0)} ms on the server). Execute runs the full solve.` +
      (live.note ? live.note.split("\n").map((n) => ` Warning: ${n}.`).join("") : ""); // overlaps, before Execute
  }
}

function setView(view) {
  app.view = view;
  const radio = $(`input[name=view][value=${view}]`);
  if (radio) radio.checked = true;
  loadGallery();
}

// --- live preview ------------------------------------------------------------------------------------
let liveTimer = null, liveBusy = false, liveAgain = false, liveSeq = 0;

function scheduleLive() {
  clearTimeout(liveTimer);
  // no preview of a draft that is applied already (Execute, Load): it would show the edit twice
  if (!$("#live").checked || draftProblem() || settingsProblem() || runningJob() || !app.gallery ||
      app.view === "original" || app.appliedVersion === app.draftVersion) {
    if (app.live) { app.live = null; paintImages(); }
    return;
  }
  liveTimer = setTimeout(runLive, LIVE_DEBOUNCE_MS);
}

async function runLive() {
  if (liveBusy) { liveAgain = true; return; }
  if (draftProblem() || settingsProblem() || !app.gallery) return;
  liveBusy = true;
  const seq = ++liveSeq, version = app.draftVersion, state = app.gallery.state;
  const t0 = performance.now();
  try {
    const out = await api("POST", "/api/live", { edit: draftJson(), seeds: app.gallery.seeds });
    if (!liveAgain && version === app.draftVersion && app.gallery && state === app.gallery.state && $("#live").checked) {
      app.live = { seq, version, state, layer: out.layer, seconds: out.seconds, note: out.note, ms: performance.now() - t0,
        images: new Map(out.images.map((im) => [im.seed, im.image])) };
      paintImages();
    }
  } catch (err) {
    if (err.status === 409 && err.code === "busy") {
      if (!runningJob()) setTimeout(scheduleLive, 1000); // other requests held the model: try again (a job: after it)
    } else {
      say(`live preview: ${err.message}`, "error");
    }
  } finally {
    liveBusy = false;
    if (liveAgain) { liveAgain = false; scheduleLive(); }
  }
}

// --- where the context fires ---------------------------------------------------------------------
let matchSeq = 0;
async function showMatches() {
  const seq = ++matchSeq;
  const box = $("#show-matches");
  if (!box.checked || !app.gallery) { app.matches = null; return paintImages(); }
  const context = contextJson();
  if (!context.length) {
    box.checked = false; // it cannot show anything: say so and leave it off
    app.matches = null;
    paintImages();
    return say("Show matches needs a context (or paste) region: paint one first", "error");
  }
  const which = app.view === "original" ? "original" : "edited";
  const seeds = app.gallery.seeds;
  const out = await whenFree("matches", "Matches will show", () => api("POST", "/api/matches", {
    layer: $("#layer").value, context, ...directionConfigs(), seeds, quantile: Number($("#quantile").value), which,
  }), showMatches);
  if (!out || seq !== matchSeq || !box.checked) return;
  app.matches = { which, images: new Map(out.overlays.map((o) => [o.seed, o.image])), threshold: out.threshold };
  paintImages();
  say(`matches (amber): the context fires above ${out.threshold.toFixed(3)}, the ${out.quantile} quantile of its heat ` +
    `on ${app.info.match_reference.length} fixed reference images`);
}
