"""Context search: where a direction fires (heat maps) and which samples show it most."""

from __future__ import annotations

import torch
from torch import nn

from .hooks import run_until
from .layers import LayerSpec


def key_maps(model: nn.Module, spec: LayerSpec, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Key maps (N, C_in, Hk, Wk) of `latents` at the layer (the network runs only up to it)."""
    out = []
    with torch.no_grad():
        for i in range(0, latents.shape[0], batch_size):
            out.append(run_until(model, spec.weight_module, latents[i : i + batch_size], record_output=False).input)
    return torch.cat(out)


def heat_maps(keys: torch.Tensor, dirs: torch.Tensor, which: int = 0) -> torch.Tensor:
    """h(x, y) = d . k(x, y) for direction `which`. keys (N, C_in, Hk, Wk), dirs (r, C_in) -> (N, Hk, Wk)."""
    return torch.einsum("nchw,c->nhw", keys.to(dirs.dtype), dirs[which])


def rank_by_heat(heats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ordered by their max heat, best first: (order (N,), scores (N,) in that order)."""
    scores = heats.flatten(1).amax(1)
    order = torch.argsort(scores, descending=True)
    return order, scores[order]


def fire_threshold(heats: torch.Tensor, quantile: float) -> float:
    """The heat above which a location counts as firing: a quantile over all given locations."""
    return float(torch.quantile(heats.flatten().to(torch.float64), quantile))
