"""The ProGAN generator (Karras et al. 2018), with the module names of the rewriting/GAN-dissection ProGAN
ports (FORMATS.md section 3), written from that description. Network only: models/formats/progan.py reads
their state dicts.

Module tree: `layer1` .. `layer{2L}` then `output_{R}x{R}`. Each layer is `norm` (pixel norm of the
layer input), [`up`, nearest 2x, in odd layers >= 3], `conv` (bias-free Conv2d), `wscale`
(x * scale + b) and `relu` (LeakyReLU 0.2). The editable layer is `layer{n}.conv`: its key is the
pixel-normalised (and upsampled) input of the conv, its value the conv output (METHOD.md section 8),
so the tail is the identity and the closed-form update is exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
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
        """Constructor arguments, stored in exported files so they can be rebuilt."""
        return {"kind": "progan", "sizes": list(self.sizes)}
