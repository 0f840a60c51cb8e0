"""What the user's selections mean at a layer: the keys under the context, and the goal the edited layer
should write on the paste image (the copy-paste composite, or the erase target)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import InvalidEdit
from .hooks import get_module, override_forward, replace_input, trace
from .layers import LayerSpec
from .masks import Box, bounding_box, copy_placement, paste_patch, resize_mask
from .stats import rows_from_map


@dataclass
class Observation:
    """One image seen at a layer: the block's inputs, the key map, the linear output and the value."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    keys: torch.Tensor  # (1, C_in, Hk, Wk) input of the weight module
    linear: torch.Tensor  # (1, C_out, Hv, Wv) output of the weight module (before the tail)
    values: torch.Tensor  # (1, C_out, Hv, Wv) output of the block (after the tail)


@dataclass
class Goal:
    """What the edited layer should write on the paste image, and where the loss looks."""

    obs: Observation  # the paste image, unedited
    values: torch.Tensor  # (1, C_out, Hv, Wv) target after the tail
    linear: torch.Tensor  # (1, C_out, Hv, Wv) target before the tail (for the closed form)
    box: Box  # region of the value grid the loss sees (y0, y1, x0, x1)


def observe(model: nn.Module, spec: LayerSpec, z: torch.Tensor) -> Observation:
    """Run the model on latent z (1, ...) up to the end of block `spec.name` and record it."""
    with torch.no_grad(), ExitStack() as stack:
        wrec = stack.enter_context(trace(model, spec.weight_module))
        brec = stack.enter_context(trace(model, spec.name, stop=True))
        model(z)
    return Observation(brec.args, brec.kwargs, wrec.input, wrec.output, brec.output)


def render_values(model: nn.Module, spec: LayerSpec, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The image (1, 3, H, W) the generator draws for latent z (1, ...) when block `spec.name` outputs `values`
    (1, C_out, Hv, Wv) instead of its own: the rest of the generator (later blocks, and for StyleGAN2 the
    paste image's own styles, noise and skip connections) renders them. Used to show a goal as the model
    will draw it."""
    block = get_module(model, spec.name)
    with torch.no_grad(), override_forward(block, lambda *_a, **_k: values):
        return model(z)


def context_keys(obs_masks: list[tuple[Observation, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys under soft context masks: rows (N, C_in) and weights (N,) with weight > 0.

    Each mask (H, W) is area-resized to its key grid, so a cell's weight is the painted fraction.
    """
    all_keys, all_w = [], []
    for obs, mask in obs_masks:
        grid = tuple(obs.keys.shape[2:])
        mask = mask.to(obs.keys.device)
        w = resize_mask(mask, grid).reshape(-1) if grid else mask.new_ones(1)
        rows = rows_from_map(obs.keys)
        keep = w > 1e-3
        all_keys.append(rows[keep])
        all_w.append(w[keep])
    keys, weights = torch.cat(all_keys), torch.cat(all_w)
    if keys.shape[0] == 0:
        raise InvalidEdit("the context masks cover no location of this layer's key grid; paint larger regions")
    return keys, weights


def copy_paste_goal(copy_obs: Observation, copy_mask: torch.Tensor, paste_obs: Observation, paste_mask: torch.Tensor, tight: bool = True) -> Goal:
    """Composite the copied values, with the copy mask as alpha, centred on the paste location.

    Done at value resolution on both the block output and the linear output, by the same placement
    and blend as the web page's pixel preview (`masks.copy_placement`, `masks.paste_patch`):
    v* = (1 - a) v_paste + a v_copy. The loss box is the pasted box (tight) or the whole map.
    """
    hv, wv = paste_obs.values.shape[2:]
    alpha = resize_mask(copy_mask, (hv, wv))
    copy_box, box = copy_placement(alpha, resize_mask(paste_mask, (hv, wv)))
    values = paste_patch(paste_obs.values, copy_obs.values, alpha, copy_box, box)
    linear = paste_patch(paste_obs.linear, copy_obs.linear, alpha, copy_box, box)
    return Goal(paste_obs, values, linear, box if tight else (0, hv, 0, wv))


def erase_units(context: list[tuple[Observation, torch.Tensor]], cov: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` key channels most specific to the context.

    Score = mean squared activation under the context masks / mean square over the data (diag C).
    """
    keys, weights = context_keys(context)
    under = (keys.to(torch.float64) ** 2 * weights[:, None]).sum(0) / weights.sum()
    score = under / cov.diagonal().to(under.device, torch.float64).clamp_min(1e-12)
    return torch.argsort(score, descending=True)[: min(count, keys.shape[1])]


def erase_goal(model: nn.Module, spec: LayerSpec, z: torch.Tensor, paste_obs: Observation, paste_mask: torch.Tensor, units: torch.Tensor, tight: bool = True) -> Goal:
    """The layer's output on the paste image with `units` zeroed in its keys inside the paste region."""
    hk, wk = paste_obs.keys.shape[2:]
    region = (resize_mask(paste_mask, (hk, wk)) > 1e-3).to(paste_obs.keys.dtype)

    def zero_units(keys: torch.Tensor) -> torch.Tensor:
        out = keys.clone()
        out[:, units] = keys[:, units] * (1 - region)
        return out

    get_module(model, spec.weight_module)
    with replace_input(model, spec.weight_module, zero_units):
        target = observe(model, spec, z)
    hv, wv = paste_obs.values.shape[2:]
    box = bounding_box(resize_mask(paste_mask, (hv, wv)), 1e-3) if tight else (0, hv, 0, wv)
    return Goal(paste_obs, target.values, target.linear, box)
