"""Context search for the web session: directions of painted context selections (cached by weights state)
and what they find on other images, a ranking by heat and overlays of where they fire.

Where a direction "fires" does not depend on the images shown: the threshold is a quantile of its heat on
a fixed reference sample of the model (`REFERENCE_SEEDS`), so a quantile means the same on the gallery, on
twelve search hits or on one image."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ..config import KeyConfig, StatsConfig
from ..edits import Selection
from ..masks import png_bytes_from_mask
from ..quality import edge_share, edge_warning
from ..rewrite import Rewriter
from ..search import fire_threshold, key_maps, rank_by_heat
from .rendering import Renderer, match_overlays

HEAT_BATCH = 64  # images per heat-map batch
DIRECTIONS_CACHE_SIZE = 32  # context direction sets kept (a page asks for the same ones repeatedly)
REFERENCE_SEEDS = tuple(range(64))  # the fixed sample whose heat sets the firing threshold
REFERENCE_KEYS_BYTES = 128 * 2**20  # key maps of the reference sample are kept when no larger than this
Found = tuple[int, float, bytes, bytes, float]  # (seed, score, overlay PNG, firing-mask PNG, fraction firing)


class ContextFinder:
    """Context directions from `Rewriter.directions` and their heat on other images, for one session.

    Every method takes the model lock; the selections are already checked (`EditSession.check_selection`).
    """

    def __init__(self, rw: Rewriter, renderer: Renderer) -> None:
        self.rw, self.renderer, self.lock = rw, renderer, renderer.lock
        self._dirs: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._ref_heat: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # by directions key: sorted heat
        self._ref_keys: tuple[tuple, torch.Tensor] | None = None  # ((state, layer), key maps of REFERENCE_SEEDS)

    def _directions(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig) -> tuple[tuple, torch.Tensor]:
        """(cache key, directions (r, C_in)), cached by weights state, layer, configs and masks. The lock is held."""
        key = (self.renderer.state(), layer, keys, stats,
               tuple((s.seed, hashlib.sha1(png_bytes_from_mask(s.mask)).hexdigest()) for s in context))
        if key not in self._dirs:
            self._dirs[key] = self.rw.directions(layer, list(context), keys, stats)
            while len(self._dirs) > DIRECTIONS_CACHE_SIZE:
                self._dirs.popitem(last=False)
        return key, self._dirs[key]

    def _heat(self, layer: str, dirs: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Heat maps (N, Hk, Wk) of the first direction on `seeds`, in batches. The lock is held."""
        return torch.cat([self.rw.heat(layer, dirs, seeds[i : i + HEAT_BATCH]) for i in range(0, len(seeds), HEAT_BATCH)])

    def threshold(self, key: tuple, layer: str, dirs: torch.Tensor, quantile: float) -> float:
        """The heat above which a location fires: the `quantile` of the heat on REFERENCE_SEEDS. The lock is held."""
        if key not in self._ref_heat:
            where = (self.renderer.state(), layer)
            if self._ref_keys is not None and self._ref_keys[0] == where:
                heat = torch.einsum("nchw,c->nhw", self._ref_keys[1].to(dirs.dtype), dirs[0])
            else:
                spec = self.rw.spec(layer)
                maps = key_maps(self.rw.model, spec, self.rw.latents(REFERENCE_SEEDS))
                if maps.numel() * maps.element_size() <= REFERENCE_KEYS_BYTES:
                    self._ref_keys = (where, maps)
                heat = torch.einsum("nchw,c->nhw", maps.to(dirs.dtype), dirs[0].to(maps.device))
            self._ref_heat[key] = heat.flatten().to(torch.float64).cpu()
            while len(self._ref_heat) > DIRECTIONS_CACHE_SIZE:
                self._ref_heat.popitem(last=False)
        return fire_threshold(self._ref_heat[key], quantile)

    def search(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
               top_k: int, quantile: float) -> tuple[str, float, list[Found], str]:
        """The `top_k` of `seeds` whose max heat along the first context direction is highest, rendered, with
        where each fires; returns (weights state, threshold, [(seed, score, overlay, firing mask, fraction)],
        warning), the warning `quality.edge_warning`'s when the direction fires along one edge of the searched
        images ("" otherwise)."""
        with self.lock.held():
            self.rw.spec(layer)  # LayerNotFound names the choices
            key, dirs = self._directions(layer, context, keys, stats)
            heats = self._heat(layer, dirs, seeds)
            order, scores = rank_by_heat(heats)
            top = order[:top_k]
            best = [(int(seeds[int(i)]), float(s)) for i, s in zip(top, scores[:top_k])]
            threshold = self.threshold(key, layer, dirs, quantile)
            state = self.renderer.state()
            imgs = np.stack(self.renderer.render_held(state, [s for s, _ in best])) if best else None
        items = match_overlays(imgs, heats[top], threshold) if best else []
        warning = edge_warning(*edge_share(heats > threshold), f"the direction fires on the {len(seeds)} searched images")
        return state, threshold, [(s, v, *item) for (s, v), item in zip(best, items)], warning

    def matches(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
                quantile: float, which: str = "edited") -> tuple[float, list[tuple[int, bytes, float]]]:
        """Where the context fires on `seeds`: (threshold, [(seed, overlay PNG, fraction firing)])."""
        with self.lock.held():
            self.rw.spec(layer)
            key, dirs = self._directions(layer, context, keys, stats)
            heats = self._heat(layer, dirs, seeds)  # (N, Hk, Wk)
            threshold = self.threshold(key, layer, dirs, quantile)
            state = self.renderer.state() if which == "edited" else self.renderer.base_state
            imgs = np.stack(self.renderer.render_held(state, seeds))
        items = match_overlays(imgs, heats, threshold)
        return threshold, [(s, png, fraction) for s, (png, _, fraction) in zip(seeds, items)]
