// Part 5: the draft as the API's edit, Execute and Suggest, following a job (progress, loss curve, cancel), the
// quality report and the suggestion table. When a job ends, what was asked for meanwhile runs (flushPending).
"use strict";

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
  const problem = draftProblem() || settingsProblem();
  if (problem) throw new Error(problem);
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
                     num(r.inside_change, 3), num(r.outside_change, 3), num(r.collateral, 3)]) {
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
      use.setAttribute("aria-label", use.title);
      use.addEventListener("click", () => {
        $("#layer").value = r.layer;
        $("#rank").value = r.rank;
        validate("rank");
        settingsChanged();
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

async function execute(again = false) {
  let body;
  try { body = draftJson(); } catch (err) { return say(err.message, "error"); }
  try {
    const job = await api("POST", `/api/execute${again === true ? "?again=true" : ""}`, body);
    app.appliedVersion = app.draftVersion; // this draft is being applied: no live preview of it on top
    followJob(job);
  } catch (err) {
    if (err.status === 409 && err.code === "duplicate") return askAgain(err.message, () => execute(true));
    say(err.message, err.status === 409 ? "busy" : "error");
  }
}

// A duplicate: say so in the message bar, with a button to do it on purpose.
function askAgain(message, again) {
  say(` ${message}`, "busy");
  const b = document.createElement("button");
  b.id = "again";
  b.textContent = "Apply it again";
  b.addEventListener("click", () => { say(""); again(); });
  $("#message").prepend(b);
  b.focus();
}

// What the finished job's edit did (the job's `report`, from the library's quality_report): one line per
// figure with its verdict (paste fidelity, transfer, locality, collateral).
function reportText(r, note) {
  return `How the edit took on ${r.heldout_seeds.length} held-out images:\n` + r.lines.join("\n") + noteLines(note);
}

// A job's (or a load's) warnings, one a line, as lines of the report.
function noteLines(note) {
  return note ? note.split("\n").map((n) => `\nNote: ${n}`).join("") : "";
}

// Warnings without a report (saved edits applied at once, not measured): shown where a job's report goes.
function showNote(heading, note) {
  const el = $("#edit-report");
  el.hidden = !note;
  el.classList.remove("error");
  el.textContent = note ? heading + noteLines(note) : "";
  el.title = "";
}

// Rules solved together: each one's report inside the joint edit.
function reportsText(rs, note) {
  const what = rs.length > 1 ? `the ${rs.length} edits solved together` : "the edit";
  return `How ${what} took on ${rs[0].heldout_seeds.length} held-out images:\n` +
    rs.map((r) => `${r.name}:\n` + r.lines.join("\n")).join("\n") + noteLines(note);
}

function showReport(j) {
  const el = $("#edit-report");
  const rs = j && j.state === "done" && j.reports && j.reports.length ? j.reports : null;
  if (rs) {
    el.hidden = false;
    el.classList.remove("error");
    el.textContent = reportsText(rs, j.note);
    el.title = rs.map((r) => `${r.name}: the rule fires on ${(100 * r.fire_fraction).toFixed(1)} % of the pixels`).join("; ");
    return;
  }
  const r = j && j.state === "done" ? j.report : null;
  el.hidden = !(r || (j && j.state === "done" && j.error));
  el.classList.toggle("error", !r);
  el.textContent = r ? reportText(r, j.note) : (j && j.error) || "";
  el.title = r ? `${r.name} (${r.layer}): seeds ${r.heldout_seeds[0]}-${r.heldout_seeds[r.heldout_seeds.length - 1]}, ` +
    `the rule fires on ${(100 * r.fire_fraction).toFixed(1)} % of the pixels (heat above its ${r.quantile} quantile)` : "";
}

async function followJob(job) {
  app.job = { ...job, losses: job.losses.slice() };
  showReport(null);
  scheduleLive(); // a job holds the model: no live preview meanwhile
  syncControls();
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
  }
  await jobEnded(app.job);
}

// A job runs that this page did not start (another tab), or one whose end this page waits for: follow it.
async function watchJob() {
  const status = await api("GET", "/api/job").catch(() => null);
  if (status && status.job && status.job.state === "running") followJob(status.job);
  else if (app.pending.size) flushPending();
}

async function jobEnded(j) {
  if (j.state !== "done") app.appliedVersion = null; // nothing was applied: the draft may be previewed again
  await refreshHistory(); // what the server now holds: Undo, Redo and Revert follow it
  if (j.state === "done" && j.kind === "suggest") {
    const best = j.suggestions[0];
    say(`tried ${j.suggestions.length} layers and ranks in ${j.seconds.toFixed(1)} s; best: ${best.layer}, rank ${best.rank}`);
    showSuggestions(j.suggestions);
  } else if (j.state === "done") {
    const how = !j.reports ? "applied" : j.reports.length > 1 ? "solved together:" : "solved again:";
    say(`${how} ${j.name} in ${j.seconds.toFixed(1)} s`);
    showReport(j);
    if (app.view === "original") setView("edited"); else app.pending.set("gallery", { what: "The gallery will update", retry: loadGallery });
  } else if (j.state === "cancelled") {
    say(`${j.kind === "suggest" ? "the suggestion was" : "the edit was"} cancelled; the model is unchanged`);
  } else {
    say(j.error || "the job failed", "error");
  }
  syncControls();
  await flushPending(); // what the user asked for while the job ran (gallery pages, previews, matches)
  syncControls();
}

function drawJob(j) {
  const status = j.state === "running"
    ? (j.phase === "solving" ? `step ${j.step} / ${j.steps}` : `${j.phase} ${j.steps ? `${j.step}/${j.steps}` : ""}`)
    : j.state;
  // while solving, the current loss; once done, the loss of the iterate kept (the solve keeps the best one)
  const last = !j.losses.length ? "" : j.state === "done"
    ? ` · best loss ${Math.min(...j.losses).toFixed(4)}` : ` · loss ${j.losses[j.losses.length - 1].toFixed(4)}`;
  $("#job-status").textContent = `${status}${last}`;
  $("#job-status").dataset.state = j.state;
  const c = $("#loss");
  c.classList.add("drawn");
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
