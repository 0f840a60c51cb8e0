"""Our own DCGAN generator with named blocks (network only: models/formats/dcgan.py reads checkpoints)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import ModelLoadError
from ..layers import LayerSpec


class DCGANGenerator(nn.Module):
    """The standard DCGAN generator (Radford et al.) with blocks named by output resolution.

    Blocks `b4, b8, ..., b{resolution}`; each is `conv` (ConvTranspose2d, no bias), `norm`
    (BatchNorm2d, all but the last) and `act` (ReLU, Tanh for the last). Input: latents
    (N, nz, 1, 1); output: images (N, nc, R, R) in [-1, 1].
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, resolution: int = 64) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ModelLoadError(f"DCGAN resolution must be a power of two >= 8, got {resolution}")
        self.nz, self.ngf, self.nc, self.resolution = nz, ngf, nc, resolution
        self.latent_shape: tuple[int, ...] = (nz, 1, 1)
        n_up = resolution.bit_length() - 3  # number of stride-2 blocks after the 4x4 block
        widths = [ngf * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 512,256,128,64
        res, c_in = 4, nz
        for i, c_out in enumerate(widths):
            first = i == 0
            conv = nn.ConvTranspose2d(c_in, c_out, 4, 1 if first else 2, 0 if first else 1, bias=False)
            self.add_module(f"b{res}", nn.Sequential(OrderedDict(conv=conv, norm=nn.BatchNorm2d(c_out), act=nn.ReLU())))
            c_in, res = c_out, res * 2
        last = nn.ConvTranspose2d(c_in, nc, 4, 2, 1, bias=False)
        self.add_module(f"b{res}", nn.Sequential(OrderedDict(conv=last, act=nn.Tanh())))
        self.block_names = [f"b{4 * 2 ** i}" for i in range(n_up + 1)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, nz, 1, 1) or (N, nz) -> images (N, nc, R, R) in [-1, 1]."""
        x = z.view(z.shape[0], self.nz, 1, 1)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x

    def editable_layers(self) -> list[LayerSpec]:
        """Every block; the key is the block input, the value its output after norm and activation."""
        return [LayerSpec(name=n, weight_module=f"{n}.conv", key_axis=0) for n in self.block_names]

    def architecture(self) -> dict[str, int | str]:
        """Constructor arguments, stored in exported files so they can be rebuilt."""
        return {"kind": "dcgan", "nz": self.nz, "ngf": self.ngf, "nc": self.nc, "resolution": self.resolution}
