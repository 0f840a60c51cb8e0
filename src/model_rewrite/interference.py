"""Interference between rules, measured with the quality report: each rule alone, inside the joint solve
(`Rewriter.apply_many`) and inside a sequential stack (each rule solved against the weights the ones before
it left).

Every figure compares the final model with the model as it was before any of the rules (the "original" of
`quality.quality_report`), using the rule's own selections and directions, so the three settings are
measured alike: a rule that another rule disturbs shows it as lower fidelity or transfer, and the other
rules' changes show up in its locality and collateral. The model is left as it was (`EditStack.trial`).

`batch_overlaps` (before a joint solve) and `stack_overlaps` (an edit against those stacked before it) say which
rules at one layer respond to the same keys (`directions.response_overlap`), and warn from `OVERLAP_WARN`: on the world benchmark
(benchmarks/world/README.md, "Many rules") every pair of rules whose overlap was under 0.1 kept at least 0.88 of
its success alone when solved jointly, while pairs at 0.18-0.52 kept 0.37-0.74 jointly (0.20-0.81 stacked); on
the face model add-glasses beside remove-glasses (0.15) kept 0.3 of its paste fidelity, add-mustache beside
open-smile (0.57) none. A low overlap is no promise: with 24 context images per world rule, two pairs at 0.02 lost
a quarter and a third of one rule's success (rules can also meet in the image, which no key measure sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .config import RenderConfig
from .directions import response_overlap
from .edits import EditSpec
from .joint import edit_content
from .quality import QualityReport, quality_report

if TYPE_CHECKING:  # pragma: no cover
    from .rewrite import Rewriter

SETTINGS = ("alone", "joint", "sequential")
OVERLAP_WARN = 0.1  # response overlap from which two rules at one layer are said to weaken each other


@dataclass(frozen=True)
class RuleQuality:
    """One rule's quality report in one setting."""

    rule: int  # index in the batch
    name: str
    setting: str  # alone, joint or sequential
    report: QualityReport

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {"rule": self.rule, "name": self.name, "setting": self.setting, "paste_fidelity": r.paste_fidelity,
                "transfer": r.transfer, "fires_on": r.fires_on, "heldout": r.heldout, "locality": r.change.ratio,
                "inside_change": r.change.inside_change, "outside_change": r.change.outside_change,
                "collateral": r.collateral}


def measure_interference(rw: "Rewriter", edits: Sequence[EditSpec], seeds: Sequence[int],
                         config: RenderConfig = RenderConfig(), joint: Sequence[Any] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> list[RuleQuality]:
    """Quality reports of every rule alone, joint and sequential (rows ordered by rule, then setting).
    `joint` may hold the batch's joint solves (`Rewriter.solve_many`), to spare solving them again."""
    edits, seeds = list(edits), list(seeds)
    names = [e.name or f"edit {i}" for i, e in enumerate(edits)]
    wanted = list(dict.fromkeys(seeds + [s for e in edits for s in e.selection_seeds]))
    base = dict(zip(wanted, rw.sample(wanted)))  # the model before any rule: every setting's original
    rows: list[RuleQuality] = []
    total, done = 3 * len(edits), 0

    def add(i: int, setting: str, report: QualityReport) -> None:
        nonlocal done
        rows.append(RuleQuality(i, names[i], setting, report))
        done += 1
        if progress is not None:
            progress(done, total)

    with rw.stack.trial():
        for i, e in enumerate(edits):
            entry = rw.apply(e)
            add(i, "alone", quality_report(rw, entry.id, seeds, config, dict(base)))
            rw.stack.remove(entry.id)
    index = {edit_content(e): i for i, e in enumerate(edits)}
    with rw.stack.trial():
        for entry in rw.apply_many(edits, joint):
            for j, m in enumerate(entry.members):
                add(index[edit_content(m.spec)], "joint", quality_report(rw, entry.id, seeds, config, dict(base), member=j))
    with rw.stack.trial():
        entries = [rw.apply(e) for e in edits]
        for i, entry in enumerate(entries):
            add(i, "sequential", quality_report(rw, entry.id, seeds, config, dict(base)))
    return sorted(rows, key=lambda r: (r.rule, SETTINGS.index(r.setting)))


def interference_table(rows: Sequence[RuleQuality]) -> list[str]:
    """The rows as a plain text table, with each setting's total collateral at the end."""
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    width = max([len(r.name) for r in rows] + [4]) + 2
    lines = [f"{'rule':<{width}}{'setting':<12}{'fidelity':>9}{'transfer':>9}{'fires':>7}{'locality':>9}{'collateral':>11}"]
    for r in rows:
        q = r.report
        lines.append(f"{r.name:<{width}}{r.setting:<12}{fmt(q.paste_fidelity):>9}{fmt(q.transfer):>9}"
                     f"{q.fires_on:>7}{fmt(q.change.ratio, '.1f'):>9}{fmt(q.collateral, '.3f'):>11}")
    totals = {s: sum(r.report.collateral for r in rows if r.setting == s) for s in SETTINGS}
    lines.append("total collateral: " + ", ".join(f"{s} {v:.3f}" for s, v in totals.items()))
    return lines


@dataclass(frozen=True)
class Overlap:
    """Two rules at one layer and how much they respond to the same keys (`directions.response_overlap`)."""

    a: str
    b: str
    layer: str
    value: float

    @property
    def warns(self) -> bool:
        return self.value >= OVERLAP_WARN

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [self.a, self.b], "layer": self.layer, "overlap": self.value, "warns": self.warns}

    def warning(self, joint: bool, remedy: str = "measure them alone, joint and stacked with `model-rewrite apply EDITS --joint`") -> str:
        """What a user should know about two overlapping rules, solved together (`joint`) or stacked (then
        `remedy` says what else to try)."""
        how = "solved together" if joint else "stacked"
        then = "" if joint else f", or {remedy}"
        return (f"overlap: {self.a!r} and {self.b!r} respond to the same keys at {self.layer} (overlap {self.value:.2f}; "
                f"warned from {OVERLAP_WARN}): {how}, each may undo part of the other; check both in the grid{then}")


def overlaps(rules: Sequence[tuple[str, torch.Tensor]], layer: str, moment: torch.Tensor) -> list[Overlap]:
    """Every pair of `rules` (name, directions (r, C_in)) at `layer`, whose keys have second moment `moment`."""
    return [Overlap(na, nb, layer, response_overlap(da, db, moment))
            for i, (na, da) in enumerate(rules) for nb, db in rules[i + 1:]]


def batch_overlaps(rw: "Rewriter", edits: Sequence[EditSpec]) -> list[Overlap]:
    """The overlaps of a batch's rules, pair by pair within each layer (statistics: the first rule's at the
    layer, as the joint solve takes them)."""
    out: list[Overlap] = []
    for layer in dict.fromkeys(e.layer for e in edits):
        here = [(i, e) for i, e in enumerate(edits) if e.layer == layer]
        moment = rw.stats(layer, here[0][1].stats).moment
        out += overlaps([(e.name or f"edit {i}", rw.edit_directions(e)) for i, e in here], layer, moment)
    return out


def stack_overlaps(rw: "Rewriter", entry_id: int, compute_stats: bool = True) -> list[Overlap]:
    """How the active edit `entry_id` overlaps each active edit before it on the same weight (each member of a
    joint entry apart). Statistics: the edit's own; without `compute_stats`, none are found unless they are
    known already (memory or disk cache)."""
    entries = rw.stack.entries
    at = next(i for i, e in enumerate(entries) if e.id == entry_id)
    new = entries[at]
    if new.spec is None:
        return []
    stats = rw.stats(new.spec.layer, new.spec.stats) if compute_stats else rw.known_stats(new.spec.layer, new.spec.stats)
    if stats is None:
        return []
    moment = stats.moment
    out = []
    for e in entries[:at]:
        if e.delta.param_path != new.delta.param_path:
            continue
        parts = [(m.spec.name or e.name, m.dirs) for m in e.members] or [(e.name, e.delta.dirs)]
        out += [Overlap(name, new.name, new.spec.layer, response_overlap(dirs, new.delta.dirs, moment))
                for name, dirs in parts]
    return out
