"""Background jobs on the model: the model lock with its fast busy answer, and starting, running and
cancelling a job (solving an edit, then measuring it on held-out images)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import RenderConfig
from ..edits import EditSpec
from ..errors import InvalidEdit, RewriteError, SolveError
from ..interference import overlaps, stack_overlaps
from ..quality import quality_report
from ..rewrite import Rewriter
from ..solve import StepCallback, refinement_note
from ..stack import StackEntry, member_names
from .errors import SessionBusy

log = logging.getLogger(__name__)
WEB_REMEDY = "solve them together (History: “solve together”)"  # what the page offers for overlapping stacked edits


@dataclass
class Job:
    """A long operation on the model (solving an edit): its progress, result, report and cancel flag."""

    id: int
    kind: str  # "execute" | "load" | "suggest" | "joint"
    name: str
    state: str = "running"  # running | done | cancelled | failed
    phase: str = "starting"  # statistics | solving | applying | measuring
    step: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    error: str = ""
    note: str = ""  # warnings about a finished job, one a line (solve.refinement_note, overlap_notes), shown under its report
    entry_id: int | None = None
    report: dict[str, Any] | None = None  # quality.QualityReport.to_dict() of the applied edit
    reports: list[dict[str, Any]] | None = None  # a joint entry's: one QualityReport.to_dict() per member rule
    suggestions: list[dict[str, Any]] | None = None  # suggest.Candidate.to_dict() rows, best first
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class JobCancelled(Exception):
    """Raised inside a job's work when its cancel flag is seen; the job ends as "cancelled"."""


class ModelLock:
    """The one lock on a model, and the job that may hold it.

    A running job holds the lock for its whole duration, so other requests fail at once with
    SessionBusy (saying what runs and how to cancel it) instead of queueing behind it; requests
    without a job wait for each other briefly.
    """

    def __init__(self) -> None:
        self.job: Job | None = None  # the latest job, running or finished
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()  # one start at a time, so two Executes cannot both start
        self._job_ids = 0

    def running_job(self) -> Job | None:
        job = self.job
        return job if job is not None and job.state == "running" else None

    def acquire(self, timeout_s: float) -> None:
        """Take the lock: SessionBusy at once while a job runs, else after `timeout_s` of other requests."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.running_job()
            if job is not None:
                raise SessionBusy(busy_message(job))
            if self._lock.acquire(timeout=0.05):
                return
            if time.monotonic() > deadline:
                raise SessionBusy("busy: the model is serving another request; try again")

    def release(self) -> None:
        self._lock.release()

    @contextmanager
    def held(self, timeout_s: float = 120.0) -> Iterator[None]:
        """Hold the model for one request (see `acquire`)."""
        self.acquire(timeout_s)
        try:
            yield
        finally:
            self.release()

    def start(self, kind: str, name: str, work: Callable[[Job], None]) -> Job:
        """Run `work(job)` in a background thread that holds the lock until it ends; SessionBusy if a job runs."""
        with self._start_lock:
            job = self.running_job()
            if job is not None:
                raise SessionBusy(f"an edit is already being executed ({job.name!r}); wait for it or cancel it")
            self.acquire(timeout_s=60.0)
            self._job_ids += 1
            job = Job(self._job_ids, kind, name)
            self.job = job
        threading.Thread(target=self._run, args=(job, work), name=f"edit-job-{job.id}", daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        try:
            work(job)
            job.state = "done"
        except JobCancelled:
            job.state = "cancelled"
        except RewriteError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a bug: report it in the page instead of leaving the job hanging
            log.exception("edit job %d failed", job.id)
            job.error, job.state = f"internal error: {type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished = time.monotonic()
            self.release()

    def cancel(self) -> Job | None:
        """Ask the running job to stop at its next step; None if no job runs."""
        job = self.running_job()
        if job is not None:
            job.cancel.set()
        return job


def busy_message(job: Job) -> str:
    """What the page says while `job` holds the model."""
    where = f"step {job.step} of {job.steps}" if job.phase == "solving" else job.phase
    doing = {"suggest": "tried at every layer", "load": "solved and applied",
             "joint": "solved together"}.get(job.kind, "executed")
    what = "the edits" if job.kind == "joint" else "the edit"
    return f"busy: {what} {job.name!r} {'are' if job.kind == 'joint' else 'is'} being {doing} ({where}); wait for it to finish or cancel it"


def overlap_notes(rw: Rewriter, entry_ids: Sequence[int], compute_stats: bool = True) -> list[str]:
    """A warning for each active edit before (or among) `entry_ids` that the new edits overlap
    (interference.stack_overlaps; without `compute_stats` only where the layer's statistics are known)."""
    return [o.warning(joint=False, remedy=WEB_REMEDY) for i in entry_ids for o in stack_overlaps(rw, i, compute_stats)
            if o.warns]


def solve_and_push(rw: Rewriter, spec: EditSpec, report_seeds: Sequence[int], job: Job, measure: bool = True) -> None:
    """A job's work: statistics, solve and push `spec`, then (with `measure`) measure the edit on `report_seeds`.

    Runs with the model lock held; raises JobCancelled when the job is cancelled before the push.
    """
    def stats_progress(done: int, total: int) -> None:
        job.step, job.steps = done, total
        if job.cancel.is_set():
            raise JobCancelled

    job.phase = "statistics"
    rw.stats(spec.layer, spec.stats, progress=stats_progress)
    job.phase, job.step = "solving", 0
    job.steps = spec.update.planned_steps

    def on_step(step: int, loss: float) -> bool:
        job.step = step
        job.losses.append(loss)
        return job.cancel.is_set()

    result = rw.solve(spec, on_step=on_step)
    if result.cancelled or job.cancel.is_set():
        raise JobCancelled
    job.phase = "applying"
    job.losses = list(result.losses) or [result.goal_loss]  # the full curve (same prefix)
    job.entry_id = rw.stack.push(result.delta, spec.name, spec).id
    job.note = "\n".join(n for n in [refinement_note(result.losses, spec.update), *overlap_notes(rw, [job.entry_id])] if n)
    if not measure:
        return
    job.phase = "measuring"
    try:
        job.report = measured(rw, job.entry_id, report_seeds)
    except RewriteError as exc:  # the edit is applied either way: say so rather than fail the job
        log.warning("measuring edit %d failed: %s", job.entry_id, exc)
        job.error = f"the edit is applied, but measuring it on held-out images failed: {exc}"


def push_all(rw: Rewriter, edits: Sequence[tuple[EditSpec, Any]], report_seeds: Sequence[int], job: Job) -> None:
    """A job's work: push a stack's edits in order, solving those without factors (each against the model with
    the edits before it applied, as it was solved), then measure the last one. All or nothing: when cancelled
    or failing part way, the edits pushed so far are removed again."""
    pushed: list[int] = []
    try:
        for i, (spec, delta) in enumerate(edits):
            if delta is None:
                solve_and_push(rw, spec, (), job, measure=False)
                pushed.append(job.entry_id)  # type: ignore[arg-type]
            else:
                job.phase = f"applying {i + 1} of {len(edits)}"
                pushed.append(rw.apply(spec, delta).id)
            if job.cancel.is_set():
                raise JobCancelled
    except BaseException:
        for entry_id in reversed(pushed):
            rw.stack.remove(entry_id)
        raise
    job.entry_id, job.phase = pushed[-1], "measuring"
    job.note = "\n".join(overlap_notes(rw, pushed))
    try:
        job.report = measured(rw, pushed[-1], report_seeds)
    except RewriteError as exc:
        job.error = f"the edits are applied, but measuring the last one on held-out images failed: {exc}"


def rules_of(entry: StackEntry) -> list[EditSpec]:
    """The rules an active entry applies (`StackEntry.rules`); InvalidEdit for an entry without a spec."""
    if not entry.rules:
        raise InvalidEdit(f"edit {entry.name!r} has no spec to solve again")
    return entry.rules


def solve_together(rw: Rewriter, entry_ids: Sequence[int], report_seeds: Sequence[int], job: Job) -> None:
    """A job's work: the active entries `entry_ids` (one weight; a joint entry counts as its rules) solved again as
    one joint solve (`Rewriter.solve_many`) against the model without them. The result takes the last entry's
    place in the history and the others are removed, all at once after the solve (a cancelled or failed job
    leaves the history as it was). Then each rule is measured inside it on `report_seeds`."""
    entries = [e for e in rw.stack.entries if e.id in set(entry_ids)]
    (result,) = _solve_jointly(rw, [spec for e in entries for spec in rules_of(e)], job, [e.id for e in entries])
    entry = rw.stack.replace(entries[-1].id, result.delta, result.name, result.members)
    for e in entries[:-1]:
        rw.stack.remove(e.id)
    _measure_members(rw, [entry], report_seeds, job)


def take_out(rw: Rewriter, entry_id: int, member: int, report_seeds: Sequence[int], job: Job) -> None:
    """A job's work: rule `member` taken out of the joint entry `entry_id` (`Rewriter.remove_member`: the others
    solved again together, in its place), then measured; cancelling leaves the entry as it was."""
    entry = next(e for e in rw.stack.entries if e.id == entry_id)
    on_step = _progress(rw, [m.spec for i, m in enumerate(entry.members) if i != member], job)
    try:
        new = rw.remove_member(entry_id, member, on_step)
    except SolveError:
        if job.cancel.is_set():
            raise JobCancelled from None
        raise
    if new is None:  # its last rule: the entry is gone
        job.entry_id, job.phase = None, "done"
        return
    _measure_members(rw, [new], report_seeds, job)


def solve_joint_batch(rw: Rewriter, specs: Sequence[EditSpec], report_seeds: Sequence[int], job: Job) -> None:
    """A job's work: rules solved together (one joint entry per layer, pushed as one batch), then measured."""
    results = _solve_jointly(rw, specs, job)
    _measure_members(rw, rw.apply_many(specs, results), report_seeds, job)


def _progress(rw: Rewriter, specs: Sequence[EditSpec], job: Job) -> StepCallback:
    """The statistics of `specs`' layers, collected with the job's progress and cancel flag; then the job is
    "solving": the callback returned follows the solve's steps and cancels it with the job."""
    def stats_progress(done: int, total: int) -> None:
        job.step, job.steps = done, total
        if job.cancel.is_set():
            raise JobCancelled

    job.phase = "statistics"
    for layer in dict.fromkeys(s.layer for s in specs):
        rw.stats(layer, next(s.stats for s in specs if s.layer == layer), progress=stats_progress)
    job.phase, job.step, job.steps = "solving", 0, specs[0].update.planned_steps if specs else 0

    def on_step(step: int, loss: float) -> bool:
        job.step = step
        job.losses.append(loss)
        return job.cancel.is_set()

    return on_step


def _solve_jointly(rw: Rewriter, specs: Sequence[EditSpec], job: Job, leave_out: Sequence[int] = ()) -> list[Any]:
    """`Rewriter.solve_many(specs)` with the job's progress (statistics, then the refinement's steps) and cancel
    flag, against the model without the active entries `leave_out`; the model is left as it was."""
    on_step = _progress(rw, specs, job)
    with ExitStack() as without:
        for entry_id in leave_out:
            without.enter_context(rw.stack.without(entry_id))
        results = rw.solve_many(specs, on_step)
    if any(r.cancelled for r in results) or job.cancel.is_set():
        raise JobCancelled
    job.phase = "applying"
    job.losses = [loss for r in results for loss in r.losses] or [r.goal_loss for r in results]
    return results


def _measure_members(rw: Rewriter, entries: Sequence[StackEntry], report_seeds: Sequence[int], job: Job) -> None:
    """The job's result for joint entries: its id (the last), warnings for overlapping rules inside each, and
    each rule's quality report inside its entry (`job.reports`)."""
    job.entry_id, job.phase = entries[-1].id, "measuring"
    notes = []
    for entry in entries:
        spec = entry.members[0].spec
        rules = list(zip(member_names(entry.members), (m.dirs for m in entry.members)))
        notes += [o.warning(joint=True) for o in overlaps(rules, spec.layer, rw.stats(spec.layer, spec.stats).moment)
                  if o.warns]
    job.note = "\n".join(notes)
    try:
        reports = []
        for entry in entries:
            originals: dict = {}  # the model without this entry, shared by its rules' reports
            reports += [quality_report(rw, entry.id, report_seeds, RenderConfig(), originals, member=i).to_dict()
                        for i in range(len(entry.members))]
        job.reports = reports
    except RewriteError as exc:
        log.warning("measuring joint edit %d failed: %s", entries[-1].id, exc)
        job.error = f"the edits are solved together and applied, but measuring them on held-out images failed: {exc}"


def suggest_layers(rw: Rewriter, spec: EditSpec, seeds: Sequence[int], job: Job) -> None:
    """A job's work: `Rewriter.suggest` for `spec` (every layer, ranks 1, 2, 4), scored on `seeds`; the
    model is left as it was. Cancelling stops it between steps."""
    job.phase = "suggesting"

    def progress(what: str, done: int, total: int) -> None:
        job.phase, job.step, job.steps = ("statistics" if what.startswith("stats") else "suggesting"), done, total
        if job.cancel.is_set():
            raise JobCancelled

    candidates = rw.suggest(spec, seeds=seeds, progress=progress)
    job.suggestions = [c.to_dict() for c in candidates]


def measured(rw: Rewriter, entry_id: int, seeds: Sequence[int]) -> dict[str, Any]:
    """`quality.quality_report` of an applied edit as JSON: paste fidelity, transfer, where its rule fires on
    `seeds` and how much the images change there and elsewhere, with plain verdict lines."""
    return quality_report(rw, entry_id, seeds, RenderConfig()).to_dict()
