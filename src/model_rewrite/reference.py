"""The authors' published algorithm (davidbau/rewriting, `rewrite/ganrewrite.py`), point by point, as a
solve method of ours (`UpdateConfig(method="reference")`), so that "the reference" means their algorithm.

What it does, as published, and where it differs from our default (`method="optimize"`):

- **Masks** reach a grid by a smoothed bilinear resize (PIL's BILINEAR, which widens its filter when
  shrinking), and every cell with weight > 0 counts as context; ours area-averages.
- **Directions**: the same whitened SVD as ours (`directions.key_directions`) on those cells.
- **Goal**: the copied values (the block's output) inside the bounding box of the copy mask, with the resized
  mask as alpha, pasted centred on the integer centre `((t + b) // 2, (l + r) // 2)` of the paste mask's box.
- **Loss box**: the pasted box widened outward to key-cell boundaries; the layer runs on the key map cropped to
  those cells, so the border cells lose their neighbours. Mean L1 over the box, no preserve term.
- **Optimiser**: Adam (lr 0.05) over the layer's whole weight from W0 (no closed-form warm start), 2001 steps;
  after steps 0, 10, 20, ... and after the last, the change W - W0 is projected onto span(D) along the key
  axis (Adam's moments carry on); the last iterate is returned, not the best.
- **Erase**: the chosen units are zeroed over the whole key map and the whole output map is fitted.

`UpdateConfig.steps`, `lr`, `loss`, `preserve`, `warm_start` and `tight_paste` do not apply to it; `erase_units`
does (the authors' `drank`). The eigenvalue floor of KeyConfig stays (theirs: none; C is full rank here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .config import REFERENCE_STEPS
from .errors import SolveError
from .goals import Observation
from .hooks import call_with_weight, get_module, override_forward, replace_input
from .layers import LayerSpec
from .masks import Box
from .solve import SolveResult, StepCallback, single_thread
from .stats import rows_from_map
from .update import LowRankDelta, adam_step, factor_from_delta, project_rows

REFERENCE_PROJECT_EVERY = 10  # their piter
REFERENCE_LR = 0.05



def smoothed_resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A mask (H, W) in [0, 1] resized to `size` (h, w) as the authors' widget masks are: an 8-bit image
    resized with PIL's BILINEAR filter (smoothed when shrinking), back in [0, 1]."""
    from PIL import Image

    img = Image.fromarray((mask.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8), mode="L")
    out = np.asarray(img.resize((size[1], size[0]), resample=Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(out.copy()).to(mask.device)


def positive_box(area: torch.Tensor) -> Box:
    """(y0, y1, x0, x1) of the cells with weight > 0 (an empty box at the origin when there are none)."""
    ys, xs = torch.nonzero(area > 0, as_tuple=True)
    if ys.numel() == 0:
        return 0, 0, 0, 0
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def integer_centre(box: Box) -> tuple[int, int]:
    """The authors' paste centre: ((y0 + y1) // 2, (x0 + x1) // 2)."""
    y0, y1, x0, x1 = box
    return (y0 + y1) // 2, (x0 + x1) // 2


def place_clip(centre: tuple[int, int], clip_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Box:
    """Where a clip of `clip_hw` goes when centred at `centre`: top-left `centre - size // 2`, clamped so that
    the clip starts inside the grid and does not run past its far edge."""
    (cy, cx), (h, w), (gh, gw) = centre, clip_hw, grid_hw
    top = max(0, min(gh - h, cy - h // 2))
    left = max(0, min(gw - w, cx - w // 2))
    return top, top + h, left, left + w


def key_cells(value_box: Box, ratio: tuple[int, int]) -> tuple[Box, Box]:
    """The key cells covering a value-grid box, and that box widened outward to their boundaries.

    `ratio` is (value rows per key row, value columns per key column)."""
    (y0, y1, x0, x1), (ry, rx) = value_box, ratio
    keys = (y0 // ry, -(-y1 // ry), x0 // rx, -(-x1 // rx))
    return keys, (keys[0] * ry, keys[1] * ry, keys[2] * rx, keys[3] * rx)


def context_rows(context: Sequence[tuple[Observation, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (N, C_in) and weights (N,) of every key cell whose smoothed-resized mask weight is > 0."""
    keys, weights = [], []
    for obs, mask in context:
        w = smoothed_resize(mask, tuple(obs.keys.shape[2:])).reshape(-1).to(obs.keys.device)
        keys.append(rows_from_map(obs.keys)[w > 0])
        weights.append(w[w > 0])
    k, w = torch.cat(keys), torch.cat(weights)
    if k.shape[0] == 0:
        raise SolveError("the context masks cover no key cell of this layer; paint larger regions")
    return k, w


def erase_units(context: Sequence[tuple[Observation, torch.Tensor]], cov: torch.Tensor, count: int) -> torch.Tensor:
    """The authors' erase units: the `count` channels with the highest mean of k^2 / E[k^2] under the context
    (weights from the smoothed resize, averaged over every cell of the masks' grids)."""
    scores, total = None, 0.0
    scale = cov.diagonal().to(torch.float64).clamp_min(1e-12)
    for obs, mask in context:
        w = smoothed_resize(mask, tuple(obs.keys.shape[2:])).reshape(-1, 1).to(torch.float64)
        s = (rows_from_map(obs.keys).to(torch.float64) ** 2 / scale.to(w.device) * w).sum(0)
        scores = s if scores is None else scores + s
        total += float(w.sum())
    assert scores is not None
    return torch.argsort(scores / max(total, 1e-12), descending=True)[: min(count, scores.numel())]


@dataclass
class ReferenceGoal:
    """The authors' goal: the layer run on `keys` (a crop of the paste image's key map) should give `values`."""

    keys: torch.Tensor  # (1, C_in, hk, wk) key cells the layer runs on
    values: torch.Tensor  # (1, C_out, hv, wv) target block output for those cells
    value_box: Box  # where `values` lie in the paste image's value grid


def copy_paste_goal(copy_obs: Observation, copy_mask: torch.Tensor, paste_obs: Observation,
                    paste_mask: torch.Tensor) -> ReferenceGoal:
    """The copied values pasted (alpha = the resized copy mask) centred on the paste mask, cropped to key cells."""
    grid = tuple(paste_obs.values.shape[2:])
    copy_area = smoothed_resize(copy_mask, grid)
    cy0, cy1, cx0, cx1 = positive_box(copy_area)
    if cy1 == cy0:
        raise SolveError("the copy mask covers no cell of this layer's value grid; paint a larger copy region")
    clip = copy_obs.values[:, :, cy0:cy1, cx0:cx1]
    alpha = copy_area[cy0:cy1, cx0:cx1].to(clip.device)
    paste_area = smoothed_resize(paste_mask, grid)
    if float(paste_area.max()) <= 0:
        raise SolveError("the paste mask covers no cell of this layer's value grid; paint a larger paste region")
    y0, y1, x0, x1 = place_clip(integer_centre(positive_box(paste_area)), (cy1 - cy0, cx1 - cx0), grid)
    h, w = y1 - y0, x1 - x0  # a clip larger than the grid is cut at the far edge
    target = paste_obs.values.clone()
    target[:, :, y0:y1, x0:x1] = (1 - alpha[:h, :w]) * target[:, :, y0:y1, x0:x1] + alpha[:h, :w] * clip[:, :, :h, :w]
    ratio = (grid[0] // paste_obs.keys.shape[2], grid[1] // paste_obs.keys.shape[3])
    (ky0, ky1, kx0, kx1), (vy0, vy1, vx0, vx1) = key_cells((y0, y1, x0, x1), ratio)
    return ReferenceGoal(paste_obs.keys[:, :, ky0:ky1, kx0:kx1], target[:, :, vy0:vy1, vx0:vx1], (vy0, vy1, vx0, vx1))


def erase_goal(model: nn.Module, spec: LayerSpec, z: torch.Tensor, paste_obs: Observation,
               units: torch.Tensor) -> ReferenceGoal:
    """The paste image's whole block output with `units` zeroed over its whole key map."""
    def zero_units(keys: torch.Tensor) -> torch.Tensor:
        out = keys.clone()
        out[:, units] = 0.0
        return out

    from .goals import observe

    with replace_input(model, spec.weight_module, zero_units):
        target = observe(model, spec, z)
    hv, wv = paste_obs.values.shape[2:]
    return ReferenceGoal(paste_obs.keys, target.values, (0, hv, 0, wv))


def cropped_block(model: nn.Module, spec: LayerSpec, obs: Observation, keys: torch.Tensor
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(weight)`: the block's output when its weight module reads `keys` (a crop of the key map) with `weight`.

    The modules before the weight module run on the image's own input and are ignored; those after it
    (normalisation, activation) run on the cropped output, as in the authors' `target_model(goal_in)`.
    """
    block, wmod = get_module(model, spec.name), get_module(model, spec.weight_module)

    def run(weight: torch.Tensor) -> torch.Tensor:
        linear = call_with_weight(wmod, spec.param_name, weight, keys)
        with override_forward(wmod, lambda *_a, **_k: linear):
            return call_with_weight(block, spec.weight_path, weight, *obs.args, **obs.kwargs)

    return run


def optimize_weight(run: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, w0: torch.Tensor,
                    dirs: torch.Tensor, key_axis: int, steps: int = REFERENCE_STEPS,
                    project_every: int = REFERENCE_PROJECT_EVERY, lr: float = REFERENCE_LR,
                    on_step: StepCallback | None = None) -> tuple[torch.Tensor, list[float], bool]:
    """The authors' loop: Adam on the whole weight from W0, mean L1 to `target`; after step i with
    i % project_every == 0 and after the last, W = W0 + P_D (W - W0). Returns (last W, losses, cancelled).

    `losses[i]` is the loss computed at step i, before that step's update (as their callback sees it)."""
    weight = w0.detach().clone().requires_grad_(True)
    m, v = torch.zeros_like(weight), torch.zeros_like(weight)
    losses: list[float] = []
    for it in range(steps):
        loss = (run(weight) - target).abs().mean()
        losses.append(float(loss.detach()))
        (grad,) = torch.autograd.grad(loss, weight)
        with torch.no_grad():
            adam_step(weight, grad, m, v, it + 1, lr)
            if it % project_every == 0 or it == steps - 1:
                weight.copy_(w0 + project_rows(weight - w0, dirs, key_axis))
        if on_step is not None and on_step(it, losses[-1]):
            return weight.detach(), losses, True
    return weight.detach(), losses, False


def solve_reference(model: nn.Module, spec: LayerSpec, dirs: torch.Tensor, goal: ReferenceGoal, obs: Observation,
                    steps: int = REFERENCE_STEPS, on_step: StepCallback | None = None) -> SolveResult:
    """Run the authors' optimisation for `goal` and return a SolveResult holding W - W0 as factors on D."""
    t0 = time.perf_counter()
    wmod = get_module(model, spec.weight_module)
    w0 = getattr(wmod, spec.param_name).detach()
    dirs = dirs.to(w0.dtype)
    run = cropped_block(model, spec, obs, goal.keys)
    try:
        with torch.no_grad():
            first = run(w0)
    except RuntimeError as exc:
        raise SolveError(f"the reference method runs layer {spec.name} on a crop of its key map, which this "
                         f"layer's block does not allow ({str(exc).splitlines()[0]}); use method 'optimize'") from None
    if first.shape != goal.values.shape:
        raise SolveError(f"the reference method's crop of layer {spec.name} gives {tuple(first.shape)}, not the goal's "
                         f"{tuple(goal.values.shape)}; use method 'optimize'")
    with single_thread():  # as our own solve: tiny steps stall when threads share the cores
        weight, losses, cancelled = optimize_weight(run, goal.values, w0, dirs, spec.key_axis, steps=steps, on_step=on_step)
    factor = factor_from_delta(weight - w0, dirs, spec.key_axis)
    delta = LowRankDelta(spec.param_path, spec.key_axis, factor, dirs)
    if not delta.is_finite():
        raise SolveError("the reference method's update holds NaN or infinite values")
    with torch.no_grad():
        final = float((run(w0 + delta.dense()) - goal.values).abs().mean())
    return SolveResult(delta, losses, closed_form_loss=float("nan"), goal_loss=final,
                       seconds=time.perf_counter() - t0, cancelled=cancelled)
