"""A procedural world of 64x64 scenes with an exact label for every pixel, and a labeller for generated images.

The scenes exist to measure rule rewriting where the truth is known: every pixel of a training image has a
class, each class is drawn from its own colour band, so a nearest-colour rule reads the classes back from a
generated image. The world's rules (what a generator must learn):

- tower tops (a pointed `roof` or a `dome`) sit on `tower` bodies;
- `window`s and `door`s sit on building `wall`s;
- trees (`canopy` on a `trunk`) stand on the `ground`.

Pure NumPy; every scene is a function of its seed (`scene_from_seed`).
"""

from __future__ import annotations

import numpy as np

CLASSES: tuple[str, ...] = (
    "sky", "cloud", "ground", "wall", "window", "door", "tower", "roof", "dome", "canopy", "trunk",
)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
# Centre of each class's colour band (RGB, 0..255). Pairwise distances are at least ~80, while a drawn
# colour strays at most COLOUR_JITTER + 3 * PIXEL_NOISE per channel from its centre.
PALETTE = np.array(
    [
        (110, 170, 240),  # sky
        (250, 250, 250),  # cloud
        (90, 170, 60),  # ground
        (190, 120, 90),  # wall
        (30, 40, 120),  # window
        (120, 40, 150),  # door
        (150, 150, 165),  # tower
        (220, 40, 40),  # roof (pointed tower top)
        (240, 200, 40),  # dome (round tower top)
        (20, 100, 35),  # canopy (tree top)
        (110, 65, 25),  # trunk
    ],
    dtype=np.float32,
)
PALETTE.setflags(write=False)
COLOUR_JITTER = 10.0  # per-image shift of a class colour, uniform in [-J, J] per channel
PIXEL_NOISE = 4.0  # per-pixel Gaussian noise (std, per channel)
SIZE = 64


def _disk(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def labels_from_seed(seed: int, size: int = SIZE) -> np.ndarray:
    """The label map (size, size) int64 of scene `seed` (the layout only; no colours)."""
    rng = np.random.default_rng([seed, 0x5CE9E])
    return _layout(rng, size)


def _layout(rng: np.random.Generator, size: int) -> np.ndarray:
    s = size / 64.0
    lab = np.full((size, size), CLASS_INDEX["sky"], dtype=np.int64)
    horizon = int(round(rng.uniform(40, 47) * s))
    lab[horizon:] = CLASS_INDEX["ground"]
    for _ in range(rng.integers(0, 3)):  # clouds, high in the sky
        m = _disk(size, size, rng.uniform(4, 16) * s, rng.uniform(0, 64) * s, rng.uniform(2, 4) * s, rng.uniform(5, 10) * s)
        lab[m & (lab == CLASS_INDEX["sky"])] = CLASS_INDEX["cloud"]
    # Objects stand on the horizon at non-overlapping horizontal slots: buildings, a tower, trees.
    kinds = ["tower"] + ["building"] * int(rng.integers(1, 3)) + ["tree"] * int(rng.integers(0, 3))
    if rng.random() < 0.1:
        kinds.remove("tower")
    rng.shuffle(kinds)
    x = rng.uniform(0, 4) * s
    for kind in kinds:
        if kind == "tower":
            w = rng.uniform(7, 10) * s
            x0, x1 = int(round(x)), int(round(x + w))
            top = int(round(horizon - rng.uniform(16, 26) * s))
            lab[top:horizon, x0:x1] = CLASS_INDEX["tower"]
            cx, half = (x0 + x1 - 1) / 2.0, (x1 - x0) / 2.0 + 1.0 * s
            if rng.random() < 0.5:  # pointed roof: a triangle on the tower
                height = rng.uniform(8, 11) * s
                y, xx = np.ogrid[:size, :size]
                frac = (top - y) / height  # 0 at the base, 1 at the apex
                m = (y < top) & (frac <= 1.0) & (np.abs(xx - cx) <= half * (1.0 - frac))
                lab[m] = CLASS_INDEX["roof"]
            else:  # dome: a half disk on the tower
                m = _disk(size, size, top, cx, half * 1.1, half)
                m[top:] = False
                lab[m] = CLASS_INDEX["dome"]
            x += w + rng.uniform(2, 5) * s
        elif kind == "building":
            w = rng.uniform(14, 22) * s
            h = rng.uniform(11, 18) * s
            x0, x1 = int(round(x)), int(round(x + w))
            y0 = int(round(horizon - h))
            lab[y0:horizon, x0:x1] = CLASS_INDEX["wall"]
            dw = int(round(3 * s))  # door: centred, on the ground line
            dx = (x0 + x1) // 2 - dw // 2
            lab[horizon - int(round(5 * s)):horizon, dx:dx + dw] = CLASS_INDEX["door"]
            ww = int(round(3 * s))
            for wy in range(y0 + int(round(2 * s)), horizon - int(round(7 * s)), int(round(5 * s))):
                for wx in range(x0 + int(round(2 * s)), x1 - ww - int(round(1 * s)), int(round(5 * s))):
                    lab[wy:wy + ww, wx:wx + ww] = CLASS_INDEX["window"]
            x += w + rng.uniform(2, 5) * s
        else:  # tree: trunk on the ground, round canopy on the trunk
            r = rng.uniform(4, 6.5) * s
            cx = x + r
            base = horizon + int(round(rng.uniform(0, 3) * s))
            trunk_top = base - rng.uniform(5, 8) * s
            t0, t1 = int(round(cx - 1 * s)), int(round(cx + 1 * s)) + 1
            lab[int(round(trunk_top)):base, t0:t1] = CLASS_INDEX["trunk"]
            lab[_disk(size, size, trunk_top - r + 1.5 * s, cx, r, r)] = CLASS_INDEX["canopy"]
            x += 2 * r + rng.uniform(2, 5) * s
        if x >= size:
            break
    return lab


def image_from_labels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour a label map: each class its palette colour, shifted per image and noised per pixel.

    labels: (H, W) int -> image (H, W, 3) uint8.
    """
    shift = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=PALETTE.shape).astype(np.float32)
    img = (PALETTE + shift)[labels]  # (H, W, 3)
    img += rng.normal(0.0, PIXEL_NOISE, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def scene_from_seed(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Scene `seed`: (image (size, size, 3) uint8, labels (size, size) int64). Deterministic in `seed`."""
    labels = labels_from_seed(seed, size)
    return image_from_labels(labels, np.random.default_rng([seed, 0xC0105])), labels


def scenes_from_seeds(seeds: range | list[int], size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Many scenes: images (N, size, size, 3) uint8 and labels (N, size, size) int64."""
    pairs = [scene_from_seed(int(s), size) for s in seeds]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def labels_from_image(images: np.ndarray) -> np.ndarray:
    """The labeller: nearest palette colour per pixel.

    images: (..., 3) uint8 in 0..255, or float in [-1, 1] (generator output, channels last) -> labels (...) int64.
    """
    x = np.asarray(images)
    x = x.astype(np.float32) if x.dtype == np.uint8 else (x.astype(np.float32) + 1.0) * 127.5
    d = ((x[..., None, :] - PALETTE) ** 2).sum(-1)  # (..., n_classes)
    return d.argmin(-1)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """A clean rendering of a label map with the palette centres: (..., H, W) -> (..., H, W, 3) uint8."""
    return PALETTE.astype(np.uint8)[labels]


def label_fractions(labels: np.ndarray) -> np.ndarray:
    """Fraction of pixels of each class over a batch of label maps: (..., H, W) -> (n_classes,)."""
    return np.bincount(labels.reshape(-1), minlength=len(CLASSES)) / labels.size


def _has_below(src: np.ndarray, dst: np.ndarray, rows: range, cols: int) -> np.ndarray:
    """For masks (N, H, W): is there a `dst` pixel at (y + dy, x + dx) for some dy in `rows`, |dx| <= cols?
    (negative dy looks above)."""
    hit = np.zeros_like(src)
    h, w = src.shape[1:]
    for dy in rows:
        for dx in range(-cols, cols + 1):
            shifted = np.zeros_like(dst)
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            shifted[:, ys, xs] = dst[:, yd, xd]
            hit |= shifted
    return hit & src


def rule_statistics(labels: np.ndarray) -> dict[str, float]:
    """How well a batch of label maps (N, H, W) obeys the world's rules, as fractions (1.0 = always).

    - `top_on_tower`: tower-top pixels (roof, dome) with a tower pixel 1..12 rows below (within 2 columns);
    - `window_on_wall`: window pixels with a wall pixel within 2 pixels;
    - `trunk_under_canopy`: trunk pixels with a canopy pixel 1..8 rows above (within 2 columns);
    - `trunk_on_ground`: trunk pixels with ground 1..10 rows below (within 2 columns);
    - `has_tower_top`: images with at least 6 tower-top pixels; `dome_share`: dome / (roof + dome) pixels.
    """
    lab = np.asarray(labels)
    c = CLASS_INDEX

    def frac(src: np.ndarray, dst: np.ndarray, rows: range, cols: int) -> float:
        total = src.sum()
        return float(_has_below(src, dst, rows, cols).sum() / total) if total else float("nan")

    top = (lab == c["roof"]) | (lab == c["dome"])
    trunk = lab == c["trunk"]
    roof_px, dome_px = (lab == c["roof"]).sum(), (lab == c["dome"]).sum()
    return {
        "top_on_tower": frac(top, lab == c["tower"], range(1, 13), 2),
        "window_on_wall": frac(lab == c["window"], lab == c["wall"], range(-2, 3), 2),
        "trunk_under_canopy": frac(trunk, lab == c["canopy"], range(-8, 0), 2),
        "trunk_on_ground": frac(trunk, lab == c["ground"], range(1, 11), 2),
        "has_tower_top": float((top.reshape(len(lab), -1).sum(1) >= 6).mean()),
        "dome_share": float(dome_px / (roof_px + dome_px)) if roof_px + dome_px else float("nan"),
    }
