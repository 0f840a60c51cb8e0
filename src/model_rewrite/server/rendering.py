"""Images of the web session: rendered images cached by weights state, their PNGs, the copy/paste preview
and the overlays of where a context fires."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..masks import bounding_box, copy_placement, paste_patch
from ..masks import png_bytes_from_mask
from ..render import data_url, overlay, png_bytes, to_uint8, upsample_map
from ..rewrite import Rewriter
from .errors import NotFound
from .jobs import ModelLock

RENDER_CACHE_SIZE = 4096  # images (about 12 kB each at 64 px, plus their PNGs)
MATCH_COLOR = (255, 176, 0)  # amber: the page's colour for "where the context fires" (red is Copy)
ImageKey = tuple[str, int]  # (weights state, seed)


class ImageCache:
    """Rendered images (H, W, 3) uint8 and their PNGs by (weights state, seed); the least recently used go first.

    Safe to use from request threads without the model lock.
    """

    def __init__(self, size: int = RENDER_CACHE_SIZE) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._images: OrderedDict[ImageKey, np.ndarray] = OrderedDict()
        self._pngs: dict[ImageKey, bytes] = {}

    def image(self, key: ImageKey) -> np.ndarray | None:
        with self._lock:
            img = self._images.get(key)
            if img is not None:
                self._images.move_to_end(key)
            return img

    def remember(self, key: ImageKey, img: np.ndarray) -> None:
        with self._lock:
            self._images[key] = img
            self._images.move_to_end(key)
            while len(self._images) > self.size:
                old, _ = self._images.popitem(last=False)
                self._pngs.pop(old, None)

    def png(self, key: ImageKey) -> bytes | None:
        with self._lock:
            return self._pngs.get(key)

    def remember_png(self, key: ImageKey, png: bytes) -> None:
        with self._lock:
            if key in self._images:  # a PNG lives as long as its image
                self._pngs[key] = png


class Renderer:
    """Images of one Rewriter's current (edited) or original weights, cached by weights state.

    A weights state names the session run (`nonce`) and the ids of the active edits, so undo and
    redo find their images again and a page of an earlier server run gets a clear 404.
    """

    def __init__(self, rw: Rewriter, lock: ModelLock, nonce: str) -> None:
        self.rw, self.lock, self.nonce = rw, lock, nonce
        self.cache = ImageCache()

    def state(self) -> str:
        """The current weights: the session nonce and the ids of the active edits."""
        ids = [e.id for e in self.rw.stack.entries]
        return f"{self.nonce}-" + ("base" if not ids else "e" + "_".join(map(str, ids)))

    @property
    def base_state(self) -> str:
        return f"{self.nonce}-base"

    def render_held(self, state: str, seeds: Sequence[int]) -> list[np.ndarray]:
        """Images (H, W, 3) uint8 of `seeds` in `state` (current or base), rendering the missing ones in one
        batch. The caller holds the model lock."""
        out: dict[int, np.ndarray] = {}
        missing = []
        for s in dict.fromkeys(seeds):
            img = self.cache.image((state, s))
            if img is None:
                missing.append(s)
            else:
                out[s] = img
        if missing:
            for s, img in zip(missing, self._sample(state, missing)):
                self.cache.remember((state, s), img)
                out[s] = img
        return [out[s] for s in seeds]

    def _sample(self, state: str, seeds: list[int]) -> np.ndarray:
        if state == self.state():
            return to_uint8(self.rw.sample(seeds))
        if state == self.base_state:
            return to_uint8(self.rw.sample_original(seeds))
        raise NotFound(f"images of weights state {state!r} are no longer available; reload the gallery")

    def render(self, seeds: Sequence[int], which: str = "edited") -> tuple[str, list[np.ndarray]]:
        """(state, images) of `seeds` from the current (edited) or original weights."""
        with self.lock.held():
            state = self.state() if which == "edited" else self.base_state
            return state, self.render_held(state, seeds)

    def image_png(self, state: str, seed: int) -> bytes:
        """PNG of one image of a weights state; from the cache, else rendered if the state is live."""
        key = (state, seed)
        png = self.cache.png(key)
        if png is not None:
            return png
        img = self.cache.image(key)
        if img is None:
            if not state.startswith(self.nonce + "-"):
                raise NotFound(f"images of weights state {state!r} are from another server run; reload the page")
            with self.lock.held():
                img = self.render_held(state, [seed])[0]
        png = png_bytes(img)
        self.cache.remember_png(key, png)
        return png

    def prerender(self, seeds: Sequence[int], which: str) -> str:
        """Render (batched) what a gallery page shows: "edited", "original" or "both"; returns the current state.
        A page whose images are all cached is answered at once, even while a job holds the model."""
        state = self.state()
        wanted = [state] * (which in ("edited", "both")) + [self.base_state] * (which in ("original", "both"))
        if all(self.cache.image((st, s)) is not None for st in wanted for s in seeds) and state == self.state():
            return state
        with self.lock.held():
            state = self.state()
            if which in ("edited", "both"):
                self.render_held(state, seeds)
            if which in ("original", "both"):
                self.render_held(self.base_state, seeds)
            return state


def copy_preview(copy_image: np.ndarray, copy_mask: torch.Tensor, paste_image: np.ndarray | None = None,
                 paste_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """What a copy takes (an RGBA crop, alpha = the mask) and, with a paste, the pixel composite and its box.

    Images are (H, W, 3) uint8, masks (H, W) in [0, 1]. The composite is the solve's goal done on pixels:
    the same `copy_placement` and `paste_patch`. Boxes are (y0, y1, x0, x1).
    """
    cy0, cy1, cx0, cx1 = bounding_box(copy_mask, 1e-3)
    opacity = (copy_mask.numpy()[..., None] * 255).round().astype(np.uint8)
    crop = np.concatenate([copy_image, opacity], -1)[cy0:cy1, cx0:cx1]
    out: dict[str, Any] = {"copy": data_url(png_bytes(crop)), "copy_box": [cy0, cy1, cx0, cx1],
                           "composite": None, "paste_box": None}
    if paste_image is not None and paste_mask is not None:
        copy_box, box = copy_placement(copy_mask, paste_mask)
        source, target = (torch.from_numpy(img).permute(2, 0, 1).float() for img in (copy_image, paste_image))
        comp = paste_patch(target, source, copy_mask, copy_box, box)
        out["composite"] = data_url(png_bytes(comp.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()))
        out["paste_box"] = list(box)
    return out


def match_overlays(images: np.ndarray, heats: torch.Tensor, threshold: float) -> list[tuple[bytes, bytes, float]]:
    """Where a context fires on images (N, H, W, 3) uint8 given its heat (N, Hk, Wk): the locations above
    `threshold`, as [(overlay PNG outlined in MATCH_COLOR, firing-region mask PNG, fraction of locations firing)]."""
    regions = upsample_map(heats, images.shape[1]) > threshold  # (N, H, W)
    tinted = overlay(images, regions, MATCH_COLOR)
    return [(png_bytes(t), png_bytes_from_mask(r.float()), float((h > threshold).float().mean()))
            for t, r, h in zip(tinted, regions, heats)]
