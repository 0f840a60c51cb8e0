"""Context search for the web session: directions of painted context selections (cached by weights state)
and what they find on other images, a ranking by heat and overlays of where they fire."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ..config import KeyConfig, StatsConfig
from ..edits import Selection
from ..masks import png_bytes_from_mask
from ..rewrite import Rewriter
from ..search import rank_by_heat
from .rendering import Renderer, match_overlays

HEAT_BATCH = 64  # images per heat-map batch
DIRECTIONS_CACHE_SIZE = 32  # context direction sets kept (a page asks for the same ones repeatedly)


class ContextFinder:
    """Context directions from `Rewriter.directions` and their heat on other images, for one session.

    Every method takes the model lock; the selections are already checked (`EditSession.check_selection`).
    """

    def __init__(self, rw: Rewriter, renderer: Renderer) -> None:
        self.rw, self.renderer, self.lock = rw, renderer, renderer.lock
        self._dirs: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _directions(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig) -> torch.Tensor:
        """Directions (r, C_in), cached by weights state, layer, configs and masks. The lock is held."""
        key = (self.renderer.state(), layer, keys, stats,
               tuple((s.seed, hashlib.sha1(png_bytes_from_mask(s.mask)).hexdigest()) for s in context))
        if key not in self._dirs:
            self._dirs[key] = self.rw.directions(layer, list(context), keys, stats)
            while len(self._dirs) > DIRECTIONS_CACHE_SIZE:
                self._dirs.popitem(last=False)
        return self._dirs[key]

    def _heat(self, layer: str, dirs: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Heat maps (N, Hk, Wk) of the first direction on `seeds`, in batches. The lock is held."""
        return torch.cat([self.rw.heat(layer, dirs, seeds[i : i + HEAT_BATCH]) for i in range(0, len(seeds), HEAT_BATCH)])

    def search(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
               top_k: int) -> tuple[str, list[tuple[int, float]]]:
        """The `top_k` of `seeds` whose max heat along the first context direction is highest, rendered;
        returns (weights state, [(seed, score)])."""
        with self.lock.held():
            self.rw.spec(layer)  # LayerNotFound names the choices
            dirs = self._directions(layer, context, keys, stats)
            order, scores = rank_by_heat(self._heat(layer, dirs, seeds))
            best = [(int(seeds[int(i)]), float(s)) for i, s in zip(order[:top_k], scores[:top_k])]
            state = self.renderer.state()
            self.renderer.render_held(state, [s for s, _ in best])
            return state, best

    def matches(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
                quantile: float, which: str = "edited") -> tuple[float, list[tuple[int, bytes, float]]]:
        """Where the context fires on `seeds`: (threshold, [(seed, overlay PNG, fraction firing)])."""
        with self.lock.held():
            self.rw.spec(layer)
            dirs = self._directions(layer, context, keys, stats)
            heats = self._heat(layer, dirs, seeds)  # (N, Hk, Wk)
            state = self.renderer.state() if which == "edited" else self.renderer.base_state
            imgs = np.stack(self.renderer.render_held(state, seeds))
        threshold, items = match_overlays(imgs, heats, quantile)
        return threshold, [(s, png, fraction) for s, (png, fraction) in zip(seeds, items)]
