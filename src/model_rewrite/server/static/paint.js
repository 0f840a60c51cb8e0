// Part 2: painting the copy, paste and context regions, with the mouse (or a pen) and with the keyboard
// (a focused image: arrow keys move the brush, Space paints, Shift+arrows paint while moving).
"use strict";

function masksOf(seed) {
  const out = [];
  if (app.draft.copy && app.draft.copy.seed === seed) out.push(["copy", app.draft.copy.mask]);
  if (app.draft.paste && app.draft.paste.seed === seed) out.push(["paste", app.draft.paste.mask]);
  if (app.draft.context.has(seed)) out.push(["context", app.draft.context.get(seed)]);
  return out;
}

function drawOverlay(canvas, seed) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const [role, mask] of masksOf(seed)) ctx.drawImage(tinted(mask, ROLE_COLORS[role], 0.5), 0, 0);
}

function redrawSeed(seed) {
  for (const c of $$(`#gallery .card[data-seed="${seed}"] canvas.paint`)) drawOverlay(c, seed);
  const card = $(`#gallery .card[data-seed="${seed}"]`);
  if (card) card.querySelector(".badges").textContent = masksOf(seed).map(([r]) => r).join(" · ");
}

function setTool(tool) {
  app.tool = tool;
  document.body.dataset.tool = tool;
  const radio = $(`input[name=tool][value=${tool}]`);
  if (radio && !radio.checked) radio.checked = true;
  syncControls();
}

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

// One brush stroke from a to b (image pixels) on image `seed` with the current tool.
function stroke(seed, a, b) {
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
}

function attachPainter(canvas, seed, which) {
  let last = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * app.res, ((e.clientY - r.top) / r.height) * app.res];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = pos(e);
    stroke(seed, last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = pos(e);
    stroke(seed, last, p);
    last = p;
  });
  const end = () => {
    if (!last) return;
    last = null;
    strokeDone(app.tool, seed);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  // the keyboard: a brush cursor on the focused image
  canvas.tabIndex = which === "original" && app.view === "both" ? -1 : 0;
  canvas.setAttribute("role", "application");
  canvas.setAttribute("aria-label", `seed ${seed}: paint here. Arrow keys move the brush, Space paints, ` +
    "Shift and arrows paint while moving");
  const cursor = document.createElement("div");
  cursor.className = "cursor";
  cursor.hidden = true;
  canvas.parentElement.appendChild(cursor);
  const kb = { x: app.res / 2, y: app.res / 2, painted: false };
  const place = () => {
    const w = Number($("#brush").value) / app.res * 100;
    Object.assign(cursor.style, { left: `${kb.x / app.res * 100 - w / 2}%`, top: `${kb.y / app.res * 100 - w / 2}%`,
      width: `${w}%`, height: `${w}%` });
  };
  canvas.addEventListener("focus", () => { cursor.hidden = false; place(); });
  canvas.addEventListener("blur", () => {
    cursor.hidden = true;
    if (kb.painted) { kb.painted = false; strokeDone(app.tool, seed); }
  });
  canvas.addEventListener("keydown", (e) => {
    const step = Math.max(1, Math.round(app.res / 32));
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[e.key]) {
      e.preventDefault();
      const from = [kb.x, kb.y];
      kb.x = Math.min(app.res - 1, Math.max(0, kb.x + moves[e.key][0]));
      kb.y = Math.min(app.res - 1, Math.max(0, kb.y + moves[e.key][1]));
      if (e.shiftKey) { stroke(seed, from, [kb.x, kb.y]); kb.painted = true; }
      place();
    } else if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      stroke(seed, [kb.x, kb.y], [kb.x, kb.y]);
      kb.painted = true;
    }
  });
  canvas.addEventListener("keyup", (e) => {
    if ((e.key === " " || e.key === "Enter" || e.key === "Shift") && kb.painted) {
      kb.painted = false;
      strokeDone(app.tool, seed);
    }
  });
}

function strokeDone(role, seed) {
  const d = app.draft;
  if (role === "context" && d.context.has(seed) && maskIsEmpty(d.context.get(seed))) d.context.delete(seed);
  if ((role === "copy" || role === "paste") && d[role] && maskIsEmpty(d[role].mask)) d[role] = null;
  redrawSeed(seed);
  draftChanged(role);
}

// The draft changed (painting, clearing, a search result added, an edit shown): previews, tray and live preview.
function draftChanged(role) {
  app.draftVersion += 1;
  if (role === "context" || role === "all") renderTray();
  if (role !== "context") updatePreview();
  if (role !== "copy") updateSpectrum();
  scheduleLive();
  syncControls();
}

function clearTool() {
  const d = app.draft;
  const seeds = [];
  if (app.tool === "context") {
    seeds.push(...d.context.keys());
    d.context.clear();
  } else if (d[app.tool]) {
    seeds.push(d[app.tool].seed);
    d[app.tool] = null;
  }
  seeds.forEach(redrawSeed);
  draftChanged(app.tool);
}
