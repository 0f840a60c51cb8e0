"""Images: generation from latents, uint8 conversion, grids and heat-map overlays, PNG output."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import atomic_write_bytes


def generate(model: nn.Module, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] for latents (N, ...), without gradients."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(latents[i : i + batch_size].to(device)).cpu() for i in range(0, latents.shape[0], batch_size)])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def upsample_map(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) maps -> (N, size, size) by nearest neighbour (each cell covers its pixels)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="nearest")[:, 0]


def overlay(images: np.ndarray, regions: torch.Tensor, edge_color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """Tint `regions` (N, H, W) bool of images (N, H, W, 3) uint8: dim outside, keep inside, an edge in
    `edge_color` (red by default; the web page draws matches in amber, red being its Copy colour)."""
    out = images.astype(np.float32) * 0.45
    inside = regions.numpy()[..., None]
    out = np.where(inside, images.astype(np.float32), out)
    r = regions.numpy()
    edge = r & ~(np.roll(r, 1, 1) & np.roll(r, -1, 1) & np.roll(r, 1, 2) & np.roll(r, -1, 2))
    out[edge] = edge_color
    return out.clip(0, 255).astype(np.uint8)


def image_grid(rows: list[np.ndarray], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Stack rows of images, each (N, H, W, 3) uint8 with the same N, into one (H', W', 3) grid."""
    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j in range(row.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = row[j]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA uint8 array (the one PNG encoder)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    """A `data:image/png;base64,...` URL of PNG bytes (for JSON answers and edit files)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Atomically write an (H, W, 3) uint8 array as PNG."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(image))
    return path
