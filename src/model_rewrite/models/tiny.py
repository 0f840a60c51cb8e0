"""A seeded, tiny DCGAN-shaped generator for tests and documentation (runs in milliseconds)."""

from __future__ import annotations

import torch

from .dcgan import DCGANGenerator


def tiny_generator(seed: int = 0) -> DCGANGenerator:
    """A 32px DCGAN (nz=16, ngf=8) with seeded random weights and non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    model = DCGANGenerator(nz=16, ngf=8, nc=3, resolution=32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()
