"""Measuring an edit: where its rule fires on held-out images and how much pixels change there vs elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .render import upsample_map
from .search import fire_threshold


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
        return dict(self.__dict__)


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
