// Part 6: the history (undo, redo, remove, revert, show), saving (the whole stack, one edit or the draft),
// loading, importing and exporting.
"use strict";

async function refreshHistory() {
  const h = await guarded(() => api("GET", "/api/history"));
  if (!h) return;
  app.history = h;
  const root = $("#history");
  root.textContent = "";
  for (const e of h.entries) {
    const li = document.createElement("li");
    li.dataset.id = e.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = e.name;
    name.title = `${e.layer}, rank ${e.rank}` + (e.members.length ? `: ${e.members.length} edits solved together` : "");
    const show = document.createElement("button");
    show.className = "show";
    show.textContent = "show";
    show.title = "put this edit's regions and settings back in the page (as a new draft)";
    show.setAttribute("aria-label", `show the regions of ${e.name}`);
    show.addEventListener("click", () => e.edit && showEdit(e.edit, { asDraft: true }));
    const rm = document.createElement("button");
    rm.className = "remove";
    rm.textContent = "remove";
    rm.setAttribute("aria-label", `remove ${e.name} from the model`);
    rm.addEventListener("click", () => historyAction("DELETE", `/api/history/${e.id}`));
    show.hidden = !e.edit; // edits solved together: their regions are their rules' (saved with them)
    li.append(name, show, rm);
    if (e.members.length) {
      li.classList.add("joint");
      li.append(membersList(e));
    }
    root.appendChild(li);
  }
  syncTogether(h.entries);
  for (const e of h.undone) {
    const li = document.createElement("li");
    li.className = "undone";
    li.textContent = `${e.name} (undone)`;
    root.appendChild(li);
  }
  syncControls();
}

// The rules of an edit solved together, each with "take out": the others are solved again together (a job).
function membersList(e) {
  const ul = document.createElement("ul");
  ul.className = "members";
  e.members.forEach((m, i) => {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = m;
    const show = document.createElement("button");
    show.className = "show";
    show.textContent = "show";
    show.title = "put this rule's regions and settings back in the page (as a new draft)";
    show.setAttribute("aria-label", `show the regions of ${m}`);
    show.addEventListener("click", () => showEdit(e.member_edits[i], { asDraft: true }));
    const out = document.createElement("button");
    out.className = "take-out";
    out.textContent = "take out";
    out.title = e.members.length > 1 ? "take this rule out; the others are solved again together" : "remove this edit";
    out.setAttribute("aria-label", `take ${m} out of ${e.name}`);
    out.addEventListener("click", () => takeOut(e.id, i));
    li.append(name, show, out);
    ul.appendChild(li);
  });
  return ul;
}

async function takeOut(id, member) {
  const out = await whenFree("take-out", "Taking the rule out will start",
    () => api("POST", `/api/history/${id}/take-out`, { member }), () => takeOut(id, member));
  if (!out) return;
  if (out.job) return followJob(out.job);
  showReport(null);
  await refreshHistory();
  await loadGallery();
}

// One "solve together" button per layer where two or more applied rules are stacked (an edit solved together
// counts as its rules): they are solved again as one joint edit (a job), in the place of the last of them.
function syncTogether(entries) {
  const root = $("#together");
  root.textContent = "";
  const rules = new Map();
  for (const e of entries) rules.set(e.layer, (rules.get(e.layer) || 0) + Math.max(1, e.members.length));
  for (const [layer, n] of rules) {
    if (n < 2 || entries.filter((e) => e.layer === layer).length < 2) continue;
    const b = document.createElement("button");
    b.className = "together";
    b.dataset.layer = layer;
    b.textContent = `solve the ${n} edits at ${layer} together`;
    b.title = "solve them again as one joint edit that replaces them, so that none undoes part of another (each is " +
      "measured inside it); save the stack first to keep the stacked versions";
    b.addEventListener("click", () => solveTogether(layer));
    root.appendChild(b);
  }
}

async function solveTogether(layer) {
  const job = await whenFree("together", "Solving together will start", () => api("POST", "/api/history/joint", { layer }),
    () => solveTogether(layer));
  if (job) followJob(job);
}

async function historyAction(method, url) {
  const h = await whenFree("history", "The history will change", () => api(method, url), () => historyAction(method, url));
  if (!h) return;
  showReport(null); // it described the model as the last job left it
  await refreshHistory();
  await loadGallery();
}

// What Save can save now, said plainly: the whole stack, one edit or the unsolved draft.
function syncSaveChoices() {
  const sel = $("#save-what");
  const n = app.history.entries.length;
  const want = [];
  // an edit-stack file holds single edits; an edit solved together is saved alone (with its rules)
  if (n > 1 && !app.history.entries.some((e) => e.members.length)) want.push(["stack", `the whole stack (${n} edits, in order)`]);
  if (n === 1) want.push(["last", "the applied edit (with its solved factors)"]);
  if (n > 1) want.push(["last", `only the last edit (${app.history.entries[n - 1].name})`]);
  want.push(["draft", "the draft (unsolved: solved when loaded)"]);
  const key = JSON.stringify(want);
  if (sel.dataset.key === key) return;
  const keep = sel.dataset.chosen; // what the user chose, if it is still a choice; else the first
  sel.textContent = "";
  for (const [value, text] of want) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    sel.appendChild(o);
  }
  sel.value = want.some(([v]) => v === keep) ? keep : want[0][0];
  sel.dataset.key = key;
}

async function refreshSaved() {
  const out = await guarded(() => api("GET", "/api/edits"));
  if (!out) return;
  app.saved = out.edits;
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
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = !e.readable ? "unreadable" : e.kind === "stack" ? `stack of ${e.count}`
      : e.kind === "joint" ? `${e.count} together` : e.has_factors ? "edit" : "draft";
    const load = document.createElement("button");
    load.className = "load";
    load.dataset.name = e.name;
    load.dataset.compatible = e.compatible ? "1" : "";
    load.textContent = "load";
    load.setAttribute("aria-label", `load ${e.name}`);
    load.addEventListener("click", () => loadEdit(e.name));
    const dl = document.createElement("a");
    dl.href = `/api/edits/${encodeURIComponent(e.name)}/file`;
    dl.textContent = "json";
    dl.setAttribute("aria-label", `download ${e.name}.json (model-rewrite apply reads it)`);
    dl.setAttribute("download", `${e.name}.json`);
    li.append(name, kind, load, dl);
    root.appendChild(li);
  }
  syncControls();
}

async function save() {
  const name = $("#save-name").value.trim();
  if (!name) return say("give a name to save under", "error");
  if (!validate("save-name")) return say($("#save-name-error").textContent, "error");
  const what = $("#save-what").value;
  const body = { name, overwrite: $("#overwrite").checked };
  if (what === "stack") body.stack = true;
  if (what === "draft") {
    try { body.edit = draftJson(); } catch (err) { return say(`the draft is incomplete: ${err.message}`, "error"); }
  }
  const out = await whenFree("save", "Saving will happen", () => api("POST", "/api/edits", body), save);
  if (!out) return;
  const said = out.kind === "stack" ? `the whole stack (${out.count} edits, with their solved factors)`
    : out.has_factors ? "the edit with its solved factors" : "the draft (solved when loaded)";
  say(`saved ${said} as ${out.name}.json`);
  await refreshSaved();
}

// Put an edit's regions and settings in the page. From the history (`asDraft`), its name is cleared so the next
// Execute gets a new one; executing it unchanged would apply it twice, which the server asks about first.
async function showEdit(edit, { asDraft = false } = {}) {
  const d = app.draft;
  const mask = (s) => maskFromDataUrl(s.mask).then((m) => ({ seed: s.seed, mask: m }));
  const [paste, copy, ...context] = await Promise.all([edit.paste ? mask(edit.paste) : null, edit.copy ? mask(edit.copy) : null,
    ...edit.context.map(mask)]);
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
  ["rank", "steps", "lr"].forEach(validate);
  $("#erase").checked = !!u.erase;
  $("#edit-name").value = asDraft ? "" : edit.name || "";
  const seeds = [...new Set([...(paste ? [paste.seed] : []), ...(copy ? [copy.seed] : []), ...context.map((s) => s.seed)])];
  $("#seeds").value = seeds.join(",");
  app.page = 0;
  app.draftVersion += 1;
  renderTray();
  await loadGallery();
  await updatePreview();
  updateSpectrum();
  syncControls();
  if (asDraft) say(`the regions of ${edit.name} are the draft again; Execute would apply it a second time`);
}

async function loadEdit(name, again = false) {
  let out;
  try {
    out = await api("POST", `/api/edits/${encodeURIComponent(name)}/load`, { apply: true, again });
  } catch (err) {
    if (err.status === 409 && err.code === "duplicate") return askAgain(err.message, () => loadEdit(name, true));
    if (err.status === 409 && err.code === "busy") return say(`${name} can be loaded when ${jobWords(runningJob() || { kind: "", name: "the running job" })} finishes`, "busy");
    return say(err.message, "error");
  }
  if (out.job) followJob(out.job); // the model is busy until it is solved: the page waits for it (flushPending)
  await showEdit(out.edit);
  app.appliedVersion = app.draftVersion; // the loaded edit is applied: no live preview of it on top
  if (out.job) {
    say(`solving ${name}${out.count > 1 ? ` (a stack of ${out.count} edits)` : ""}…`);
  } else {
    say(out.count > 1 ? `loaded the stack ${name}: ${out.count} edits applied in order; the page shows the last one's regions`
      : `loaded ${name}`);
    showNote(`${name} was applied with its saved factors (not measured):`, out.note); // overlaps with earlier edits
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
    say(`imported ${out.name}${out.kind === "stack" ? ` (a stack of ${out.count} edits)` : ""}; load it to apply`);
    await refreshSaved();
  }
}
