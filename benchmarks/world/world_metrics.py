"""Measurements of the world benchmark that do not depend on a model: a fast exact labeller, the mode filter,
the objects of a class, object-level success, mask geometry (dilation, components, boxes) and rank correlations.

Object rule (`object_success`): the unedited and the edited label maps are both mode filtered
(`mode_filter`: every pixel takes the most common label of its 3x3 neighbourhood, pixels outside the image do
not vote, the centre pixel's own label wins ties), which removes the generator's isolated stray pixels. An
*object* is a 4-connected component of the context class in the filtered unedited labels with at least
`MIN_OBJECT_PIXELS` pixels (the same 4-connectivity `largest_component` uses to find the instances the edits are made on).
An object counts as rewritten when more than half (`OBJECT_HIT_FRACTION`) of its pixels carry the target label in
the filtered edited labels. Object success = rewritten objects / objects, pooled over all images.
"""

from __future__ import annotations

import numpy as np
import torch

from world import PALETTE

MODE_SIZE = 3  # side of the mode filter's window
MIN_OBJECT_PIXELS = 4  # smaller components of the filtered labels are specks, not objects
OBJECT_HIT_FRACTION = 0.5  # an object is rewritten when MORE than this fraction of its pixels take the target


def fast_labels(images: np.ndarray) -> np.ndarray:
    """`world.labels_from_image` for uint8 images (..., 3), bit for bit, ~8x faster: argmin_c |p_c|^2 - 2 x.p_c
    in float32, exact because every term is an integer below 2^24; ties go to the first class in both."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise TypeError("fast_labels reads uint8 images; use world.labels_from_image for float ones")
    p = torch.from_numpy(PALETTE.astype(np.float32))  # a writable copy
    assert bool((p == p.round()).all()), "the exactness argument needs an integer palette"
    flat = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 3))).float()
    out = torch.empty(flat.shape[0], dtype=torch.int64)
    step = 1 << 20
    for i in range(0, flat.shape[0], step):
        d = torch.addmm((p * p).sum(1), flat[i:i + step], p.T, alpha=-2.0)
        out[i:i + step] = d.argmin(-1)
    return out.numpy().reshape(x.shape[:-1])


def _box_sum(mask: np.ndarray, r: int) -> np.ndarray:
    """Sum of (N, H, W) uint8 `mask` over the (2r+1)^2 window around each pixel, zero outside the image."""
    h, w = mask.shape[-2:]
    pad = np.zeros(mask.shape[:-2] + (h + 2 * r, w + 2 * r), np.uint8)
    pad[..., r:r + h, r:r + w] = mask
    out = np.zeros(mask.shape, np.uint8)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out += pad[..., dy:dy + h, dx:dx + w]
    return out


def mode_filter(labels: np.ndarray, n_classes: int | None = None, size: int = MODE_SIZE) -> np.ndarray:
    """Each pixel of (N, H, W) labels takes the most common label in its size x size window (in-image pixels
    only); its own label wins ties, then the lower class index."""
    lab = np.asarray(labels)
    n_classes = int(lab.max()) + 1 if n_classes is None else n_classes
    best = np.full(lab.shape, -1, np.int16)
    out = lab.copy()
    for c in range(n_classes):
        m = (lab == c).astype(np.uint8)
        score = 2 * _box_sum(m, size // 2).astype(np.int16) + m  # the centre breaks ties
        better = score > best
        out[better], best[better] = c, score[better]
    return out


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of (N, H, W) bool `mask`: int64 ids (> 0, unique across images), 0 off the mask.

    Min-label propagation: every pixel takes the smallest id among itself and its in-mask 4-neighbours until
    nothing changes."""
    m = np.asarray(mask, bool)
    big = np.iinfo(np.int64).max
    ids = np.where(m, np.arange(1, m.size + 1).reshape(m.shape), big)
    while True:
        new = ids.copy()
        new[..., 1:, :] = np.minimum(new[..., 1:, :], ids[..., :-1, :])
        new[..., :-1, :] = np.minimum(new[..., :-1, :], ids[..., 1:, :])
        new[..., :, 1:] = np.minimum(new[..., :, 1:], ids[..., :, :-1])
        new[..., :, :-1] = np.minimum(new[..., :, :-1], ids[..., :, 1:])
        new[~m] = big
        if np.array_equal(new, ids):
            break
        ids = new
    return np.where(m, ids, 0)


def objects(labels: np.ndarray, cls: int, min_pixels: int = MIN_OBJECT_PIXELS) -> np.ndarray:
    """Objects of class `cls` in (N, H, W) labels as component ids (0: none): the rule of the module docstring,
    applied to labels that are already mode filtered."""
    ids = components(labels == cls)
    uniq, inv, counts = np.unique(ids.reshape(-1), return_inverse=True, return_counts=True)
    keep = (uniq > 0) & (counts >= min_pixels)
    return np.where(keep[inv].reshape(ids.shape), ids, 0)


def object_success(obj_ids: np.ndarray, filtered_after: np.ndarray, target: int) -> tuple[float, int]:
    """(fraction of objects with > OBJECT_HIT_FRACTION of their pixels labelled `target` after the edit, number
    of objects). `obj_ids` from `objects`, `filtered_after` the mode-filtered edited labels."""
    on = obj_ids > 0
    if not on.any():
        return float("nan"), 0
    _, inv = np.unique(obj_ids[on], return_inverse=True)
    size = np.bincount(inv)
    hits = np.bincount(inv, weights=(filtered_after[on] == target).astype(np.float64), minlength=len(size))
    return float((hits / size > OBJECT_HIT_FRACTION).mean()), int(len(size))


# --- masks -----------------------------------------------------------------------------------------
def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of (..., H, W) by a (2r+1)^2 square."""
    out = mask.copy()
    for _ in range(r):
        m = out.copy()
        m[..., 1:, :] |= out[..., :-1, :]
        m[..., :-1, :] |= out[..., 1:, :]
        m[..., :, 1:] |= m[..., :, :-1]
        m[..., :, :-1] |= m[..., :, 1:]
        out = m
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, stack = [], [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x`, ties given their average rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (nan when a side is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
