"""ProGAN (Karras et al. 2018) generators in the state-dict layout of the rewriting/GAN-dissection
ProGAN ports (FORMATS.md section 3), written from that description.

Module tree: `layer1` .. `layer{2L}` then `output_{R}x{R}`. Each layer is `norm` (pixel norm of the
layer input), [`up`, nearest 2x, in odd layers >= 3], `conv` (bias-free Conv2d), `wscale`
(x * scale + b) and `relu` (LeakyReLU 0.2). The editable layer is `layer{n}.conv`: its key is the
pixel-normalised (and upsampled) input of the conv, its value the conv output (METHOD.md section 8),
so the tail is the identity and the closed-form update is exact.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from ..layers import LayerSpec


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + 1e-8). (B, C, H, W) -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class WScale(nn.Module):
    """Equalized learning rate after a bias-free conv: x * scale + b, scale = gain / sqrt(C_in)."""

    def __init__(self, out_channels: int, in_channels: int, gain: float) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b[None, :, None, None]


class NearestUp(nn.Module):
    """Nearest-neighbour 2x upsampling. (B, C, H, W) -> (B, C, 2H, 2W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ProGANLayer(nn.Module):
    """norm -> [up] -> conv (k x k, bias-free) -> wscale (gain sqrt(2)/k) -> lrelu 0.2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, up: bool) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.up = NearestUp() if up else None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.wscale = WScale(out_channels, in_channels, math.sqrt(2.0) / kernel_size)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.up is not None:
            x = self.up(x)
        return self.relu(self.wscale(self.conv(x)))


class ProGANOutput(nn.Module):
    """norm -> 1x1 conv to RGB -> wscale (gain 1) -> clamp to [-1, 1] (Hardtanh)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_channels, 3, 1, bias=False)
        self.wscale = WScale(3, in_channels, 1.0)
        self.clamp = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clamp(self.wscale(self.conv(self.norm(x))))


class ProGANGenerator(nn.Module):
    """A ProGAN generator. `sizes` = [z_dim, C_4, C_8, ..., C_R]: layer1 maps z (a 1x1 map) to 4x4 with a
    4x4 conv (padding 3), layer2 is a 3x3 conv at 4x4, then per resolution an upsampling layer (odd)
    and a 3x3 layer (even); resolution R = 4 * 2^(len(sizes) - 2).

    forward(z (B, z_dim) or (B, z_dim, 1, 1)) -> images (B, 3, R, R) in [-1, 1].
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ModelLoadError(f"ProGAN sizes must be [z_dim, C_4, ...] with positive entries, got {sizes}")
        self.sizes = sizes
        self.z_dim = sizes[0]
        self.resolution = 4 * 2 ** (len(sizes) - 2)
        self.latent_shape: tuple[int, ...] = (self.z_dim, 1, 1)
        self.layer1 = ProGANLayer(sizes[0], sizes[1], 4, 3, up=False)
        self.layer2 = ProGANLayer(sizes[1], sizes[1], 3, 1, up=False)
        n = 3
        for c_in, c_out in itertools.pairwise(sizes[1:]):
            self.add_module(f"layer{n}", ProGANLayer(c_in, c_out, 3, 1, up=True))
            self.add_module(f"layer{n + 1}", ProGANLayer(c_out, c_out, 3, 1, up=False))
            n += 2
        self.num_layers = n - 1
        self.add_module(f"output_{self.resolution}x{self.resolution}", ProGANOutput(sizes[-1]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], self.z_dim, 1, 1)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return getattr(self, f"output_{self.resolution}x{self.resolution}")(x)

    def editable_layers(self) -> list[LayerSpec]:
        """`layer{n}.conv` for every layer: key = normalised (upsampled) input, value = conv output."""
        return [LayerSpec(name=f"layer{i}.conv", weight_module=f"layer{i}.conv", key_axis=1)
                for i in range(1, self.num_layers + 1)]

    def architecture(self) -> dict[str, Any]:
        return {"kind": "progan", "sizes": list(self.sizes)}


def _renamed_old_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """The old `features.{n-1}.*` / `output.*` layout renamed to `layer{n}.*` / `output_{R}x{R}.*`."""
    n_layers = len([k for k in sd if re.fullmatch(r"features\.\d+\.conv\.weight", k)])
    res = 4 * 2 ** ((n_layers - 2) // 2)
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"features\.(\d+)\.(.*)", key):
            out[f"layer{int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif key.startswith("output."):
            out[f"output_{res}x{res}." + key[len("output."):]] = value
        else:
            out[key] = value
    return out


def sizes_from_state_dict(sd: dict[str, Any]) -> list[int]:
    """[z_dim, C_4, C_8, ...] read from the conv weight shapes: layer1's in/out, then every odd layer's out."""
    layers = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"layer(\d+)\.conv\.weight", k)))
    if not layers or layers != list(range(1, len(layers) + 1)) or len(layers) % 2:
        raise ModelLoadError(f"a ProGAN state dict has layer1..layer2L conv weights; found layers {layers}")
    for n in [1] + list(range(3, len(layers) + 1, 2)):
        if not isinstance(sd[f"layer{n}.conv.weight"], torch.Tensor) or sd[f"layer{n}.conv.weight"].dim() != 4:
            raise ModelLoadError(f"layer{n}.conv.weight must be a 4-D conv weight")
    w1 = sd["layer1.conv.weight"]
    return [int(w1.shape[1]), int(w1.shape[0])] + [int(sd[f"layer{n}.conv.weight"].shape[0]) for n in range(3, len(layers) + 1, 2)]


def progan_from_state_dict(sd: Any, source: str) -> ProGANGenerator:
    """A ProGANGenerator from a state dict (current or old key layout, optionally wrapped in {'state_dict': ...})."""
    from . import _load_strict

    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{source} holds a {type(sd).__name__}, not a ProGAN state dict")
    if "features.0.conv.weight" in sd:
        sd = _renamed_old_keys(sd)
    if "layer1.conv.weight" not in sd:
        hint = " (it looks like a StyleGAN2 checkpoint: use stylegan2:PATH)" if "g_ema" in sd or "style.1.weight" in sd else ""
        raise ModelLoadError(f"{source} has no layer1.conv.weight (keys {sorted(map(str, sd))[:8]}); not a ProGAN state dict{hint}")
    model = ProGANGenerator(sizes_from_state_dict(sd))
    _load_strict(model, dict(sd), source)
    return model.eval()


def load_progan_checkpoint(path: str | Path) -> tuple[ProGANGenerator, str]:
    """A ProGAN from a `.pth` state dict, read with weights_only=True, and a description of its source."""
    from .stylegan2 import read_torch_checkpoint

    path = Path(path)
    return progan_from_state_dict(read_torch_checkpoint(path), str(path)), f"ProGAN state dict {path.resolve()}"
