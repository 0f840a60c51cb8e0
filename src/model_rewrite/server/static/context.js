// Part 4: the copy/paste previews, the context tray, how many directions the context spans (next to the rank),
// and search: by the context or any painted region ("match selection"), results that show where they fire and
// join the context in one click.
"use strict";

let previewSeq = 0;
async function updatePreview() {
  const d = app.draft;
  const seq = ++previewSeq;
  $("#copy-info").textContent = d.copy ? `(copy: seed ${d.copy.seed})` : "";
  $("#paste-info").textContent = d.paste ? `seed ${d.paste.seed}` : "";
  if (!d.copy) {
    for (const id of ["copy-preview", "paste-preview", "rendered-preview"]) $(`#${id}`).removeAttribute("src");
    $("#paste-box").hidden = true;
    $("#rendered-layer").textContent = "";
    return;
  }
  const body = { copy: selectionJson(d.copy) };
  if (d.paste) Object.assign(body, { paste: selectionJson(d.paste), layer: $("#layer").value });
  const out = await whenFree("preview", "The previews will update", () => api("POST", "/api/preview", body), updatePreview);
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

function thumb(mask, url, alt) {
  const c = document.createElement("canvas");
  c.width = c.height = app.res;
  c.className = "thumb";
  c.setAttribute("role", "img");
  c.setAttribute("aria-label", alt);
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

// The tray's pictures under the weights the gallery now shows: a picture asked for while a job held the model
// (loading a saved edit solves it) or under weights since replaced would otherwise stay blank.
function trayThumb(seed) {
  return thumb(app.draft.context.get(seed), imageUrl(seed), `context on seed ${seed}`);
}

function refreshTrayThumbs() {
  for (const item of $$("#context-tray .tray-item")) {
    const seed = Number(item.dataset.seed);
    const old = item.querySelector("canvas.thumb");
    if (old) old.replaceWith(trayThumb(seed));
  }
}

function renderTray() {
  const tray = $("#context-tray");
  tray.textContent = "";
  for (const seed of app.draft.context.keys()) {
    const item = document.createElement("div");
    item.className = "tray-item";
    item.dataset.seed = seed;
    item.appendChild(trayThumb(seed));
    const label = document.createElement("span");
    label.textContent = seed;
    const rm = document.createElement("button");
    rm.className = "remove";
    rm.title = rm.ariaLabel = `remove seed ${seed} from the context`;
    rm.setAttribute("aria-label", rm.title);
    rm.textContent = "×";
    rm.addEventListener("click", () => {
      app.draft.context.delete(seed);
      redrawSeed(seed);
      draftChanged("context");
    });
    item.append(label, rm);
    tray.appendChild(item);
  }
  const n = app.draft.context.size;
  $("#context-count").textContent = n ? `(${n} image${n > 1 ? "s" : ""})` : "";
  $("#context-hint").textContent = n
    ? "The rule applies where these regions' keys appear. Rank: how many of their directions it covers."
    : "Where the rule applies. None painted yet, so the paste region is used: paint the same kind of place on a " +
      "few images (Context tool, key 3) or add search results.";
  $$("#search-results .tray-item").forEach((el) => el.classList.toggle("added", app.draft.context.has(Number(el.dataset.seed))));
  if ($("#show-matches").checked) showMatches();
}

function contextJson() {
  const ctx = [...app.draft.context].map(([seed, mask]) => ({ seed, mask: maskDataUrl(mask) }));
  if (!ctx.length && app.draft.paste) ctx.push(selectionJson(app.draft.paste));
  return ctx;
}

// The region a search ranks images by: the context (or paste region), or any painted region (match selection).
function searchRegion() {
  const by = $("#search-by").value;
  if (by === "context") return contextJson();
  const sel = app.draft[by];
  return sel ? [selectionJson(sel)] : [];
}

// --- how many directions the context spans ------------------------------------------------------------
let spectrumSeq = 0;
async function updateSpectrum() {
  const seq = ++spectrumSeq;
  const root = $("#spectrum");
  const context = contextJson();
  if (!context.length || app.errors.rank) { root.textContent = ""; return; }
  const out = await whenFree("spectrum", "The context's directions will show", () => api("POST", "/api/spectrum", {
    layer: $("#layer").value, context, ...directionConfigs(),
  }), updateSpectrum);
  if (!out || seq !== spectrumSeq) return;
  root.textContent = "";
  const rank = Number($("#rank").value);
  out.values.forEach((v, i) => {
    const bar = document.createElement("span");
    bar.className = `bar${i < rank ? " used" : ""}`;
    bar.style.height = `${Math.max(2, Math.round(v * 30))}px`;
    bar.title = `direction ${i + 1}: ${v.toFixed(3)} of the largest`;
    root.appendChild(bar);
  });
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `spans ${out.directions} direction${out.directions === 1 ? "" : "s"} (≥ 10 % of the largest, ` +
    `${out.keys} keys): ${out.values.slice(0, 4).map((v) => v.toFixed(2)).join(" ")}${out.values.length > 4 ? " …" : ""}`;
  root.appendChild(label);
  root.dataset.values = JSON.stringify(out.values);
  root.setAttribute("aria-label", `singular values of the context: ${label.textContent}; rank ${rank} uses the first ${rank}`);
}

// --- search ---------------------------------------------------------------------------------------------
async function search() {
  const context = searchRegion();
  const by = $("#search-by").value;
  if (!context.length) return say(`paint a ${by === "context" ? "context (or paste)" : by} region first`, "error");
  if (!validate("search-seeds")) return say($("#search-seeds-error").textContent, "error");
  say("searching…");
  const out = await whenFree("search", "The search will run", () => api("POST", "/api/search", {
    layer: $("#layer").value, context, ...directionConfigs(), seeds: $("#search-seeds").value, top_k: 12,
    quantile: Number($("#quantile").value),
  }), search);
  if (!out) return;
  app.searchResults = out.matches;
  const root = $("#search-results");
  root.textContent = "";
  for (const m of out.matches) {
    const item = document.createElement("div");
    item.className = "tray-item";
    item.dataset.seed = m.seed;
    const img = document.createElement("img");
    img.src = m.overlay; // where it fires, outlined in amber
    img.className = "thumb";
    img.alt = `seed ${m.seed}: fires on ${(100 * m.fraction).toFixed(0)} % (score ${m.score.toFixed(2)})`;
    const label = document.createElement("span");
    label.className = "score";
    label.textContent = `${m.seed} · ${m.score.toFixed(2)}`;
    const add = document.createElement("button");
    add.className = "add";
    add.textContent = "+ context";
    add.disabled = m.fraction === 0;
    add.title = m.fraction ? `add where it fires on seed ${m.seed} to the context` : "it fires nowhere above the threshold";
    add.setAttribute("aria-label", `add seed ${m.seed} to the context`);
    add.addEventListener("click", () => addToContext(m));
    item.append(img, label, add);
    item.classList.toggle("added", app.draft.context.has(m.seed));
    root.appendChild(item);
  }
  $("#show-results").hidden = !out.matches.length;
  const found = `best ${out.matches.length} of ${out.searched} images by the ${by === "context" ? "context" : by + " region"}'s ` +
    `direction; amber: where each fires (above ${out.threshold.toFixed(3)}, the ${out.quantile} quantile on the reference images)`;
  // a warning goes first: the message line is cut at the window's width (its title holds the whole text)
  if (out.warning) say(`Warning: ${out.warning}. ${found}`, "error"); else say(found);
}

async function addToContext(m) {
  const mask = await maskFromDataUrl(m.mask);
  app.draft.context.set(m.seed, mask);
  redrawSeed(m.seed);
  draftChanged("context");
  say(`added where seed ${m.seed} fires to the context (${app.draft.context.size} images)`);
}
