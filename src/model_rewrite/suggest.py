"""Choosing a layer and a rank for an edit: solve it at every layer that can hold its masks and at a few
ranks, score each with the quality report on held-out images, and rank the candidates.

The ranking rule (documented, so a user can disagree with it): a candidate's score is its **net change where
the rule fires**: the mean pixel change inside the locations where the rule fires on held-out images, minus the
change outside them on the same images, minus the collateral (the change on the images where it fires least);
all three are mean absolute changes of the images in [-1, 1] (`quality.py`). An edit that changes nothing
scores 0; one that changes everything alike scores below 0. Copy-paste and erase edits are scored alike. Ties
keep the order layers and ranks were tried.

Why this rule and not transfer or paste fidelity: on the procedural world's exact labels
(`benchmarks/world/bench_suggest.py`, six rules), exact success rises with the change where the rule fires and
collateral is what the user pays; paste fidelity rises with rank on the paste image while held-out success
falls, transfer tracks success only weakly, and a hard collateral cut-off threw away the one layer that worked.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import RenderConfig
from .edits import EditSpec
from .errors import RewriteError
from .quality import QualityReport, quality_report

if TYPE_CHECKING:  # pragma: no cover
    from .rewrite import Rewriter

DEFAULT_RANKS = (1, 2, 4)
MIN_KEY_SIDE = 4  # a key grid smaller than this cannot tell a painted region from the rest of the image
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Candidate:
    """One (layer, rank) tried for an edit, its quality report and what it cost."""

    layer: str
    rank: int
    quality: QualityReport | None  # None when the edit could not be solved here (see `error`)
    seconds: float
    error: str = ""

    @property
    def score(self) -> float:
        """Net change where the rule fires: inside change - outside change - collateral; -inf when unsolved."""
        q = self.quality
        if q is None:
            return float("-inf")
        return q.change.inside_change - q.change.outside_change - q.collateral

    def to_dict(self) -> dict[str, Any]:
        q = self.quality
        return {"layer": self.layer, "rank": self.rank, "score": None if q is None else self.score,
                "transfer": None if q is None else q.transfer, "paste_fidelity": None if q is None else q.paste_fidelity,
                "locality": None if q is None else q.change.ratio, "collateral": None if q is None else q.collateral,
                "inside_change": None if q is None else q.change.inside_change,
                "outside_change": None if q is None else q.change.outside_change,
                "fires_on": None if q is None else q.fires_on, "seconds": round(self.seconds, 3), "error": self.error}


def candidate_layers(rw: "Rewriter") -> list[str]:
    """The editable layers whose key grid is at least MIN_KEY_SIDE cells on a side."""
    return [info.name for info in rw.layers() if info.key_resolution >= MIN_KEY_SIDE]


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first by score; the unsolved last (a stable sort: ties keep the order they were tried in)."""
    return sorted(candidates, key=lambda c: (c.quality is None, -c.score if c.quality else 0.0))


def rank_layers_by_goal(rw: "Rewriter", edit: EditSpec, layers: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """Layers ranked, before solving anything, by goal fidelity: how much of the painted preview each layer can
    draw at all (the goal rendered through the rest of the generator vs the pixel composite, in the pasted box;
    quality.py). Best first; copy-paste edits only (an erase edit has no painted preview)."""
    from .masks import copy_placement, paste_patch
    from .quality import clamp01, fidelity

    rw.check_edit(edit)
    if edit.copy is None or edit.paste is None or edit.update.erase:
        raise RewriteError("ranking layers by goal fidelity needs a copy-paste edit (an erase edit has no painted preview)")
    copy_img, paste_img = rw.sample([edit.copy.seed, edit.paste.seed])
    copy_box, box = copy_placement(edit.copy.mask.cpu(), edit.paste.mask.cpu())
    preview = paste_patch(paste_img, copy_img, edit.copy.mask.cpu(), copy_box, box)
    out = []
    for layer in (list(layers) if layers is not None else candidate_layers(rw)):
        rendered = rw.render_goal(dataclasses.replace(edit, layer=rw.spec(layer).name))
        out.append((layer, clamp01(fidelity(rendered, paste_img, preview, box))))
    return sorted(out, key=lambda item: -item[1])


def suggest(rw: "Rewriter", edit: EditSpec, *, layers: Sequence[str] | None = None,
            ranks: Sequence[int] = DEFAULT_RANKS, refine: bool = False, seeds: Sequence[int] = range(1000, 1016),
            config: RenderConfig = RenderConfig(), progress: Progress | None = None) -> list[Candidate]:
    """Try `edit` at each of `layers` (default: `candidate_layers`) and `ranks`, best first.

    Each candidate is solved by the closed form (`refine`: by the edit's own method), pushed, measured with
    `quality_report` on `seeds` and undone, so the model is left as it was. Statistics of layers not yet
    cached are collected first (`progress("stats <layer>", done, total)`).
    """
    rw.check_edit(edit)
    layers = list(layers) if layers is not None else candidate_layers(rw)
    if not layers:
        raise RewriteError("no layer to try: give layers whose key grid is at least "
                           f"{MIN_KEY_SIDE} cells on a side")
    for layer in layers:
        rw.stats(layer, edit.stats, progress=(lambda d, t, layer=layer: progress(f"stats {layer}", d, t))
                 if progress else None)
    out: list[Candidate] = []
    total = len(layers) * len(ranks)
    redo = list(rw.stack.undone)
    originals: dict = {}  # images of the model as it is, shared by every trial  # pushing a trial clears the redo list: the user's is put back afterwards
    for layer in layers:
        for rank in ranks:
            t0 = time.perf_counter()
            spec = dataclasses.replace(
                edit, layer=layer, keys=dataclasses.replace(edit.keys, rank=rank),
                update=edit.update if refine else dataclasses.replace(edit.update, method="closed_form"))
            try:
                entry = rw.apply(spec)
            except RewriteError as exc:  # e.g. the masks cover no cell of this layer's grid
                out.append(Candidate(layer, rank, None, time.perf_counter() - t0, str(exc)))
            else:
                try:
                    quality = quality_report(rw, entry.id, seeds, config, originals)
                finally:
                    rw.stack.undo()
                    rw.stack.undone[:] = redo  # a trial is not something the user can redo
                out.append(Candidate(layer, rank, quality, time.perf_counter() - t0))
            if progress is not None:
                progress("solve and score", len(out), total)
    return rank_candidates(out)
