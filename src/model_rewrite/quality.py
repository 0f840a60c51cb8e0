"""How well an applied edit took, in figures a user can read: paste fidelity, transfer, locality, collateral
and how many held-out images the rule fires on, each with a one-line verdict.

Definitions (images in [-1, 1]; L1 = mean absolute difference over a box's pixels and colour channels):

- **paste fidelity**: on the paste image, inside the pasted box, 1 - L1(edited, preview) / L1(original,
  preview), where the preview is the pixel composite the user saw (the copied pixels, alpha = copy mask,
  placed by `masks.copy_placement`). 1: the edit draws the preview; 0: no closer than the unedited image;
  negative: further away.
- **transfer**: the same fidelity on each held-out image where the rule fires, with the copied patch placed
  by the rule "same offset from the firing peak as on the paste image": the patch centre goes to the image's
  heat peak plus (paste box centre - the paste image's own heat peak). Averaged over the images that fire.
- **fires on**: held-out images whose heat peak exceeds the firing threshold (the `fire_quantile` of all
  held-out heat, as for the change report).
- **locality**: mean change inside vs outside where the rule fires (`report.change_report`).
- **collateral**: mean change over the quarter of the held-out images where the rule fires least.
- **which gap** (on the paste image, inside the pasted box; both clamped to [0, 1]): *goal fidelity* (a), how
  much of the painted preview this layer can express at all: the fidelity of the rendered goal (the goal
  features drawn by the rest of the generator, `Rewriter.render_goal`) to the preview; *solve fidelity* (b),
  how much of that reachable target the solve reached: the fidelity of the edited image to the rendered goal.
  Low (a): the layer is the problem; high (a) but low (b): the solve is.

- **edge**: the share of the held-out images' firing cells (heat above the threshold) that lie in one outermost
  row or column of the key grid, for the side holding most. At `EDGE_WARN_SHARE` or more a warning line is added:
  a context painted against the image's edge teaches its direction the edge itself (convolutions see padding
  there), and the rule then fires along that edge of every image. Measured on the face examples (32 held-out
  images): 0.48 along the top for green-hair, whose context touches the top edge; at most 0.12 for any side of
  the other ten.

Erase edits have no pixel preview: their fidelity, transfer and goal fidelity are None (their solve fidelity
is measured in the paste mask's box).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .config import RenderConfig
from .errors import InvalidEdit
from .masks import Box, bounding_box, box_center, copy_placement, paste_box, paste_patch
from .report import ChangeReport, measure_edit

if TYPE_CHECKING:  # pragma: no cover
    from .rewrite import Rewriter

# thresholds of the verdicts: (at least this, verdict), best first; the last line is the fallback
FIDELITY_VERDICTS = ((0.5, "the edit draws most of the preview on the paste image"),
                     (0.2, "the edit draws part of the preview on the paste image"),
                     (None, "the edit falls short of the preview: try another layer, a higher rank or more steps"))
TRANSFER_VERDICTS = ((0.3, "the rule carries over to held-out images where the context appears"),
                     (0.1, "the rule carries over weakly to held-out images"),
                     (None, "the rule does not carry over to held-out images"))
LOCALITY_VERDICTS = ((3.0, "changes stay where the rule fires"),
                     (1.5, "changes spill somewhat beyond where the rule fires"),
                     (None, "changes spread over the whole image"))
GOAL_VERDICTS = ((0.5, "this layer can draw most of what you painted"),
                 (None, "this layer cannot draw what you painted: try another layer"))
SOLVE_VERDICTS = ((0.5, "the solve reached most of the goal this layer can draw"),
                  (None, "the solve fell short of a reachable goal: more steps or rank"))
EDGE_WARN_SHARE = 0.25  # warn when this share of the firing cells lies along one edge of the key grid
COLLATERAL_VERDICTS = ((0.02, "images without the context barely change"),  # at most this
                       (0.05, "images without the context change a little"),
                       (None, "images without the context change visibly"))


@dataclass(frozen=True)
class QualityReport:
    """The quality figures of one applied edit with their verdicts (see the module's docstring)."""

    name: str
    layer: str
    seeds: tuple[int, ...]  # the held-out images measured
    fires_on: int  # of which the rule fires on
    paste_fidelity: float | None
    transfer: float | None  # None for erase edits, or when the rule fires on no held-out image
    change: ChangeReport  # locality: inside vs outside change
    collateral: float
    goal_fidelity: float | None = None  # (a) rendered goal vs painted preview
    solve_fidelity: float | None = None  # (b) edited result vs rendered goal
    verdicts: dict[str, str] = field(default_factory=dict)
    edge_side: str = ""  # the key grid's side (top, bottom, left, right) holding most of the firing cells
    edge_share: float = 0.0  # the share of the firing cells in that outermost row or column

    @property
    def heldout(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the figures, the change report's fields at top level, and the plain lines."""
        d = asdict(self)
        d.update(d.pop("change"), heldout_seeds=list(d.pop("seeds")), heldout=self.heldout, lines=self.lines())
        return d

    def lines(self) -> list[str]:
        """One plain line per figure, for a terminal or a page."""
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        return [f"paste fidelity {fmt(self.paste_fidelity)}: {self.verdicts['paste_fidelity']}",
                f"transfer {fmt(self.transfer)} (fires on {self.fires_on} of {self.heldout} held-out images): "
                f"{self.verdicts['transfer']}",
                f"locality {self.change.ratio:.1f}x (inside {self.change.inside_change:.3f}, outside "
                f"{self.change.outside_change:.3f}): {self.verdicts['locality']}",
                f"collateral {self.collateral:.3f}: {self.verdicts['collateral']}",
                f"goal fidelity {fmt(self.goal_fidelity)}: {self.verdicts['goal_fidelity']}",
                f"solve fidelity {fmt(self.solve_fidelity)}: {self.verdicts['solve_fidelity']}"] + self.warnings()

    def warnings(self) -> list[str]:
        """Lines about what the figures above do not show: the rule firing along an edge of the images."""
        warning = edge_warning(self.edge_side, self.edge_share)
        return [warning] if warning else []


def verdict(value: float | None, table: tuple, higher_is_better: bool = True) -> str:
    """The first verdict of `table` whose bound `value` meets (>= when higher is better, else <=)."""
    if value is None:
        return "not measured (an erase edit has no preview, or the rule fires on no held-out image)"
    for bound, text in table:
        if bound is None or (value >= bound if higher_is_better else value <= bound):
            return text
    raise AssertionError("a verdict table ends with a fallback")


def fidelity(edited: torch.Tensor, original: torch.Tensor, preview: torch.Tensor, box: Box) -> float:
    """1 - L1(edited, preview) / L1(original, preview) inside `box` of images (3, H, W)."""
    y0, y1, x0, x1 = box
    crop = lambda t: t[..., y0:y1, x0:x1]  # noqa: E731
    want = float((crop(original) - crop(preview)).abs().mean())
    got = float((crop(edited) - crop(preview)).abs().mean())
    return 1.0 - got / want if want > 1e-8 else (1.0 if got <= 1e-8 else 0.0)


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def edge_share(fire: torch.Tensor) -> tuple[str, float]:
    """fire (N, Hk, Wk) bool: the side of the grid whose outermost row or column holds the largest share of the
    True cells, and that share ("", 0.0 when none is True). A corner cell counts for both of its sides."""
    total = int(fire.sum())
    if total == 0:
        return "", 0.0
    sides = {"top": fire[:, 0, :], "bottom": fire[:, -1, :], "left": fire[:, :, 0], "right": fire[:, :, -1]}
    side = max(sides, key=lambda s: int(sides[s].sum()))  # ties: the first in this order
    return side, int(sides[side].sum()) / total


def edge_warning(side: str, share: float, what: str = "the rule fires") -> str:
    """The warning line for `edge_share`'s result ("" below `EDGE_WARN_SHARE`), for reports and search."""
    if share < EDGE_WARN_SHARE:
        return ""
    return (f"edge: {100 * share:.0f}% of where {what} lies along the images' {side} edge: the context's direction "
            f"has picked up the edge itself (a context painted against the edge does this); paint the context away "
            f"from the edge")


def _peak(heat: torch.Tensor, resolution: int) -> tuple[float, float]:
    """Pixel coordinates (y, x) of the centre of the key cell where `heat` (Hk, Wk) peaks."""
    hk, wk = heat.shape
    i = int(torch.argmax(heat))
    return (i // wk + 0.5) * resolution / hk, (i % wk + 0.5) * resolution / wk


def quality_report(rw: "Rewriter", entry_id: int, seeds: Sequence[int], config: RenderConfig = RenderConfig(),
                   originals: dict[int, torch.Tensor] | None = None, member: int | None = None) -> QualityReport:
    """Measure the active edit `entry_id` of `rw.stack` on held-out `seeds` (the model without this edit
    is the "original"). `originals` may hold images (3, R, R) of the model without this edit by seed, from
    an earlier call, to spare rendering them again (`suggest` tries many edits on one model; the interference
    report passes the unedited model's). For a joint entry, `member` names the rule measured: its own
    selections and directions, the entry's whole change."""
    originals = originals if originals is not None else {}
    seeds = list(seeds)
    entry = next((e for e in rw.stack.entries if e.id == entry_id), None)
    spec = entry.spec if entry is not None else None
    dirs = None
    if entry is not None and member is not None:
        if not 0 <= member < len(entry.members):
            raise InvalidEdit(f"edit {entry_id} has {len(entry.members)} member(s); member {member} does not exist")
        spec, dirs = entry.members[member].spec, entry.members[member].dirs
    wanted = seeds + ([spec.paste.seed] if spec is not None else []) + (
        [spec.copy.seed] if spec is not None and spec.copy is not None else [])
    missing = [s for s in dict.fromkeys(wanted) if s not in originals]
    if missing and entry is not None:
        with rw.stack.without(entry_id):
            originals.update(zip(missing, rw.sample(missing)))
    m = measure_edit(rw, entry_id, seeds, config, before=torch.stack([originals[s] for s in seeds]) if entry else None,
                     dirs=dirs)
    assert entry is not None  # measure_edit refused a missing entry
    res, heats = rw.info.resolution, m.heats  # heats (N, Hk, Wk)
    th = m.report.change.threshold
    peaks = heats.flatten(1).amax(1)
    fires = peaks > th
    change = (m.after - m.before).abs().flatten(1).mean(1)  # (N,)
    quarter = max(1, len(peaks) // 4)
    collateral = float(change[torch.argsort(peaks)[:quarter]].mean())
    paste_fid = transfer = goal_fid = solve_fid = None
    copied = spec is not None and spec.copy is not None and not spec.update.erase
    if spec is not None:
        with rw.stack.without(entry_id):
            rendered = rw.render_goal(spec)
        paste_orig, paste_edit = originals[spec.paste.seed], rw.sample([spec.paste.seed])[0]
        paste_mask = spec.paste.mask.cpu()
        box = bounding_box(paste_mask, 1e-3)
        if copied:
            copy_img, copy_mask = originals[spec.copy.seed], spec.copy.mask.cpu()
            copy_box, box = copy_placement(copy_mask, paste_mask)
            preview = paste_patch(paste_orig, copy_img, copy_mask, copy_box, box)
            paste_fid = fidelity(paste_edit, paste_orig, preview, box)
            goal_fid = clamp01(fidelity(rendered, paste_orig, preview, box))
        solve_fid = clamp01(fidelity(paste_edit, paste_orig, rendered, box))
    if copied:
        paste_heat = rw.heat(m.report.layer, entry.delta.dirs if dirs is None else dirs, [spec.paste.seed],
                             config.heat_direction)[0]
        py, px = _peak(paste_heat, res)
        cy, cx = box_center(box)
        offset = (cy - py, cx - px)
        scores = []
        for i in torch.nonzero(fires).flatten().tolist():
            y, x = _peak(heats[i], res)
            placed = paste_box((y + offset[0], x + offset[1]), box[1] - box[0], box[3] - box[2], (res, res))
            target = paste_patch(m.before[i], copy_img, copy_mask, copy_box, placed)
            scores.append(fidelity(m.after[i], m.before[i], target, placed))
        transfer = sum(scores) / len(scores) if scores else None
    verdicts = {"paste_fidelity": verdict(paste_fid, FIDELITY_VERDICTS), "transfer": verdict(transfer, TRANSFER_VERDICTS),
                "locality": verdict(m.report.change.ratio, LOCALITY_VERDICTS),
                "collateral": verdict(collateral, COLLATERAL_VERDICTS, higher_is_better=False),
                "goal_fidelity": verdict(goal_fid, GOAL_VERDICTS), "solve_fidelity": verdict(solve_fid, SOLVE_VERDICTS)}
    name = (spec.name or f"member {member}") if member is not None and spec is not None else m.report.name
    side, share = edge_share(heats > th)
    return QualityReport(name, m.report.layer, tuple(seeds), int(fires.sum()), paste_fid, transfer,
                         m.report.change, collateral, goal_fid, solve_fid, verdicts, side, share)
