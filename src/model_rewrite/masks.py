"""Masks: PNG data URLs <-> soft [0,1] tensors, resizing to feature grids, boxes, and the copy-paste rule
(`copy_placement` says where a copy lands, `paste_patch` blends it there) for feature maps and pixels alike."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidEdit
from .render import png_bytes

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open
MAX_MASK_SIDE = 2048  # the largest mask read when the model (and so the image size) is not known
MAX_REQUEST_PIXELS = 16 * 1024 * 1024  # mask pixels one web request may decode in all (16 masks of 1024x1024)
PNG_PREFIX = "data:image/png;base64,"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mask_from_image(img: "Image.Image") -> torch.Tensor:  # noqa: F821
    """A soft mask (H, W) in [0, 1] from a PIL image: its alpha channel if it has a varying one,
    else its luminance."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() != alpha.max():
            return torch.from_numpy(alpha.astype(np.float32) / 255.0)
        rgb = np.asarray(img.convert("RGBA"))
        return torch.from_numpy((rgb[..., :3].mean(-1) * (rgb[..., 3] / 255.0)).astype(np.float32) / 255.0)
    return torch.from_numpy(np.asarray(img.convert("L")).astype(np.float32) / 255.0)


def png_size(head: bytes) -> tuple[int, int]:
    """(width, height) from the first 24 bytes of a PNG (its signature and IHDR chunk), read without
    decoding anything; InvalidEdit when the bytes are not the start of a PNG."""
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InvalidEdit("mask data is not a readable image: it does not start with a PNG header (masks are PNGs)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def data_url_png_size(url: Any) -> tuple[int, int]:
    """(width, height) a PNG data URL claims in its header: only its first 32 base64 characters are decoded."""
    if not isinstance(url, str) or not url.startswith(PNG_PREFIX):
        raise InvalidEdit("a mask must be a PNG data URL ('data:image/png;base64,...')")
    try:
        head = base64.b64decode(url[len(PNG_PREFIX) : len(PNG_PREFIX) + 32], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEdit("mask data URL is not valid base64") from None
    return png_size(head)


def check_mask_size(size: tuple[int, int], max_side: int | None, what: str = "mask") -> int:
    """The pixel count of a mask of `size` (w, h); InvalidEdit when a side is 0 or over `max_side` (the
    model's image side; MAX_MASK_SIDE when not known)."""
    limit = min(max_side, MAX_MASK_SIDE) if max_side else MAX_MASK_SIDE
    w, h = size
    if not 0 < w <= limit or not 0 < h <= limit:
        raise InvalidEdit(f"{what} is {w}x{h} pixels, over the limit of {limit}x{limit}: paint masks at the "
                          "image's size")
    return w * h


def check_mask_budget(urls: Iterable[Any], max_side: int | None, max_pixels: int = MAX_REQUEST_PIXELS) -> None:
    """Refuse, before decoding any, masks whose headers claim more than `max_side` on a side or more than
    `max_pixels` in all (the work one request may cost)."""
    total = 0
    for i, url in enumerate(urls):
        total += check_mask_size(data_url_png_size(url), max_side, f"mask {i}")
        if total > max_pixels:
            raise InvalidEdit(f"the masks of this request hold over {max_pixels} pixels in all; send fewer masks "
                              "(each at the image's size)")


def _decode_png(raw: bytes, max_side: int | None, what: str) -> torch.Tensor:
    """A soft mask from PNG bytes; the size in the header is checked before anything is decoded."""
    from PIL import Image

    check_mask_size(png_size(raw[:24]), max_side, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the size is checked above
            with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
                img.load()
                return mask_from_image(img)
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types (OSError, SyntaxError, zlib.error...)
        raise InvalidEdit(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None


def mask_from_data_url(url: Any, max_side: int | None = None) -> torch.Tensor:
    """Decode a `data:image/png;base64,...` URL into a soft mask (H, W) in [0, 1]. The PNG's header is read
    first: a mask over `max_side` (the model's image side, if known) on a side is refused undecoded."""
    data_url_png_size(url)
    try:
        raw = base64.b64decode(url[len(PNG_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEdit("mask data URL is not valid base64") from None
    return _decode_png(raw, max_side, "mask")


def mask_from_png(path: str | Path, max_side: int | None = None) -> torch.Tensor:
    """A soft mask from a PNG file (alpha if present, else luminance), its header checked first."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidEdit(f"cannot read mask {path}: {exc.strerror or exc}") from None
    return _decode_png(raw, max_side, f"mask {path}")


def mask_from_png_data_url(url: object, what: str) -> torch.Tensor:
    """A soft mask (H, W) from a data URL that must hold a PNG (`data:image/png;base64,...`), as the
    original authors' request files do; InvalidEdit naming `what` otherwise."""
    if not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        got = f"{url[:30]!r}..." if isinstance(url, str) else type(url).__name__
        raise InvalidEdit(f"{what} mask must be a PNG data URL ('data:image/png;base64,...'), got {got}")
    from PIL import Image

    try:
        fmt = Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1], validate=True))).format
    except (binascii.Error, OSError, ValueError) as exc:
        raise InvalidEdit(f"{what} mask is not a readable image: {exc}") from None
    if fmt != "PNG":
        raise InvalidEdit(f"{what} mask is a {fmt} image labelled as PNG; save the mask as a PNG")
    try:
        return mask_from_data_url(url)
    except InvalidEdit as exc:
        raise InvalidEdit(f"{what}: {exc}") from None


def fit_mask(mask: torch.Tensor, resolution: int, what: str) -> torch.Tensor:
    """A square mask of any size resized (area average) to `resolution` x `resolution`: masks painted at
    another image size (the authors' are 256 or 1024 px) used on this model. Non-square masks are refused.
    The result is rounded to 8 bits, as an edit file stores it, so that a converted request and the
    request itself give the same edit."""
    h, w = mask.shape[-2:]
    if h != w:
        raise InvalidEdit(f"{what} mask is {w}x{h} pixels, not square; masks are painted on whole (square) images")
    if h == resolution:
        return mask
    return (resize_mask(mask, resolution).clamp(0, 1) * 255).round() / 255


def png_bytes_from_mask(mask: torch.Tensor) -> bytes:
    """A grayscale PNG of a mask (H, W) in [0, 1]."""
    return png_bytes((mask.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))


def data_url_from_mask(mask: torch.Tensor) -> str:
    """`data:image/png;base64,...` of a mask (H, W) in [0, 1]; lossless for 8-bit masks."""
    return "data:image/png;base64," + base64.b64encode(png_bytes_from_mask(mask)).decode("ascii")


def check_mask(mask: torch.Tensor, resolution: int, what: str) -> torch.Tensor:
    """Validate a mask for a model of `resolution`: 2-D, square size matching, finite, not empty."""
    if mask.dim() != 2:
        raise InvalidEdit(f"{what} mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != (resolution, resolution):
        raise InvalidEdit(
            f"{what} mask is {mask.shape[1]}x{mask.shape[0]} but the model makes {resolution}x{resolution} "
            "images; paint the mask at the image's size"
        )
    if not torch.isfinite(mask).all():
        raise InvalidEdit(f"{what} mask holds NaN or infinite values")
    if float(mask.max()) <= 0:
        raise InvalidEdit(f"{what} mask is empty: paint at least one pixel")
    return mask.clamp(0, 1)


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Area-average a mask (H, W) to `size` (h, w): each cell gets the mean of the pixels it covers."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(mask[None, None].float(), size=hw, mode="area")[0, 0]


def bounding_box(mask: torch.Tensor, threshold: float = 0.0) -> Box:
    """Smallest box (y0, y1, x0, x1) holding every cell above `threshold`."""
    ys, xs = torch.nonzero(mask > threshold, as_tuple=True)
    if ys.numel() == 0:
        raise InvalidEdit("the mask is empty at this resolution; paint a larger region")
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def scale_box(box: Box, factor: float) -> Box:
    """A box scaled to another grid, rounded outward."""
    import math

    y0, y1, x0, x1 = box
    return math.floor(y0 * factor), math.ceil(y1 * factor), math.floor(x0 * factor), math.ceil(x1 * factor)


def paste_box(center: tuple[float, float], height: int, width: int, grid: tuple[int, int]) -> Box:
    """A box of (height, width) centred at `center` (y, x), shifted to lie inside `grid` (H, W)."""
    gh, gw = grid
    height, width = min(height, gh), min(width, gw)
    y0 = int(round(center[0] - height / 2))
    x0 = int(round(center[1] - width / 2))
    y0 = max(0, min(gh - height, y0))
    x0 = max(0, min(gw - width, x0))
    return y0, y0 + height, x0, x0 + width


def box_center(box: Box) -> tuple[float, float]:
    y0, y1, x0, x1 = box
    return (y0 + y1) / 2, (x0 + x1) / 2


def copy_placement(copy_alpha: torch.Tensor, paste_mask: torch.Tensor, threshold: float = 1e-3) -> tuple[Box, Box]:
    """Where a copy lands, on one grid (H, W) holding both masks: (copy_box, paste_box).

    The copy is the bounding box of `copy_alpha` above `threshold`; it lands at the same size, centred on
    the centre of the paste mask's bounding box and shifted to lie inside the grid. Solving an edit uses
    it on the value grid (the goal) and the web page on pixels (the preview), so both agree.
    """
    if copy_alpha.shape != paste_mask.shape:
        raise InvalidEdit(f"copy and paste masks must share a grid to be placed, got {tuple(copy_alpha.shape)} "
                          f"and {tuple(paste_mask.shape)}; resize both to the same grid first")
    cy0, cy1, cx0, cx1 = bounding_box(copy_alpha, threshold)
    grid = (int(copy_alpha.shape[0]), int(copy_alpha.shape[1]))
    box = paste_box(box_center(bounding_box(paste_mask, threshold)), cy1 - cy0, cx1 - cx0, grid)
    return (cy0, cy1, cx0, cx1), box


def paste_patch(target: torch.Tensor, source: torch.Tensor, alpha: torch.Tensor, copy_box: Box, to_box: Box) -> torch.Tensor:
    """A copy of `target` (..., H, W) with `source`'s cells at `copy_box` blended in at `to_box`.

    out = (1 - a) target + a source, where a is `alpha` (H, W) at `copy_box`; the boxes come from
    `copy_placement`. `target` and `source` share a shape; only the last two axes are spatial.
    """
    cy0, _, cx0, _ = copy_box
    y0, y1, x0, x1 = to_box
    h, w = y1 - y0, x1 - x0
    a = alpha[cy0 : cy0 + h, cx0 : cx0 + w]
    patch = source[..., cy0 : cy0 + h, cx0 : cx0 + w]
    out = target.clone()
    out[..., y0:y1, x0:x1] = (1 - a) * target[..., y0:y1, x0:x1] + a * patch
    return out
