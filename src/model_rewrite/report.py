"""Measuring an edit: where its rule fires on held-out images and how much pixels change there vs elsewhere.

`measure_edit` is the one measurement, used by `model-rewrite apply` (report.json, grids), the web app
and the benchmarks; the pure functions below it take tensors and return tensors or numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .config import RenderConfig
from .errors import InvalidEdit
from .render import upsample_map
from .search import fire_threshold

if TYPE_CHECKING:  # pragma: no cover
    from .rewrite import Rewriter


@dataclass(frozen=True)
class ChangeReport:
    """Mean absolute pixel change (images in [-1, 1]) inside vs outside the firing regions."""

    inside_change: float
    outside_change: float
    ratio: float  # inside / outside
    fire_fraction: float  # fraction of pixels counted as inside
    threshold: float  # heat threshold used
    quantile: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EditReport:
    """What one applied edit did on held-out images: the change report plus which edit and images."""

    name: str
    layer: str
    seeds: tuple[int, ...]
    change: ChangeReport

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict (the change figures at top level, as in report.json)."""
        return {"name": self.name, "layer": self.layer, "heldout_seeds": list(self.seeds), **self.change.to_dict()}


@dataclass
class Measurement:
    """An EditReport with the images it was measured on, for grids and overlays."""

    report: EditReport
    before: torch.Tensor  # (N, 3, R, R) in [-1, 1], the model without this edit
    after: torch.Tensor  # (N, 3, R, R), the model with it
    regions: torch.Tensor  # (N, R, R) bool, where the edit's direction fires
    heats: torch.Tensor  # (N, Hk, Wk) the edit's direction's heat on the key grid


def fire_regions(heats: torch.Tensor, resolution: int, quantile: float) -> tuple[torch.Tensor, float]:
    """Pixels (N, R, R) bool where the heat (N, Hk, Wk) exceeds its `quantile` over all given images."""
    th = fire_threshold(heats, quantile)
    return upsample_map(heats, resolution) > th, th


def change_report(before: torch.Tensor, after: torch.Tensor, regions: torch.Tensor, threshold: float, quantile: float) -> ChangeReport:
    """Compare images (N, 3, R, R) before and after an edit inside and outside `regions` (N, R, R)."""
    change = (after - before).abs().mean(1)  # (N, R, R), mean over colour channels
    inside = float(change[regions].mean()) if regions.any() else 0.0
    outside = float(change[~regions].mean()) if (~regions).any() else 0.0
    return ChangeReport(inside, outside, inside / max(outside, 1e-12), float(regions.float().mean()), threshold, quantile)


def measure_edit(rw: "Rewriter", entry_id: int, seeds: Sequence[int], config: RenderConfig = RenderConfig(),
                 before: torch.Tensor | None = None, dirs: torch.Tensor | None = None) -> Measurement:
    """Measure the active edit `entry_id` of `rw.stack` on the images `seeds`.

    Before = the model with every active edit but this one (pass `before` when the caller has those images
    already); after = the model as it is. The firing regions come from the edit's own direction
    `config.heat_direction` (its strongest by default), or from `dirs` (a joint entry's member's own).
    """
    entry = next((e for e in rw.stack.entries if e.id == entry_id), None)
    if entry is None:
        raise InvalidEdit(f"no active edit has id {entry_id}")
    seeds = list(seeds)
    if not seeds:
        raise InvalidEdit("measure an edit on at least one image")
    dirs = entry.delta.dirs if dirs is None else dirs
    if config.heat_direction >= dirs.shape[0]:
        raise InvalidEdit(f"heat_direction {config.heat_direction} is out of range: edit {entry.name!r} has "
                          f"{dirs.shape[0]} direction(s), numbered from 0")
    layer = entry.spec.layer if entry.spec is not None else _layer_of(rw, entry.delta.param_path)
    if before is None:
        with rw.stack.without(entry.id):
            before = rw.sample(seeds)
    after = rw.sample(seeds)
    heats = rw.heat(layer, dirs, seeds, config.heat_direction)
    regions, th = fire_regions(heats, rw.info.resolution, config.fire_quantile)
    change = change_report(before, after, regions, th, config.fire_quantile)
    return Measurement(EditReport(entry.name, layer, tuple(seeds), change), before, after, regions, heats)


def _layer_of(rw: "Rewriter", param_path: str) -> str:
    from .layers import editable_layers

    for spec in editable_layers(rw.model):
        if spec.param_path == param_path:
            return spec.name
    raise InvalidEdit(f"no editable layer owns {param_path}")
