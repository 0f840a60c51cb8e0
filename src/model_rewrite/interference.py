"""Interference between rules, measured with the quality report: each rule alone, inside the joint solve
(`Rewriter.apply_many`) and inside a sequential stack (each rule solved against the weights the ones before
it left).

Every figure compares the final model with the model as it was before any of the rules (the "original" of
`quality.quality_report`), using the rule's own selections and directions, so the three settings are
measured alike: a rule that another rule disturbs shows it as lower fidelity or transfer, and the other
rules' changes show up in its locality and collateral. The model is left as it was (`EditStack.trial`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import RenderConfig
from .edits import EditSpec
from .joint import edit_content
from .quality import QualityReport, quality_report

if TYPE_CHECKING:  # pragma: no cover
    from .rewrite import Rewriter

SETTINGS = ("alone", "joint", "sequential")


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
