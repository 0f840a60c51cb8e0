"""Solving an edit: fit the factor L of W = W0 + L D so the layer writes the goal on the paste image.

The closed form (least squares on the layer's linear output) warm-starts a constrained Adam
optimisation of the block's real output; each step is factored to cost a rank-r layer.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .config import UpdateConfig
from .errors import SolveError
from .goals import Goal, Observation
from .hooks import call_with_weight, get_module, override_forward
from .layers import LayerSpec
from .update import LowRankDelta, delta_from_factors, linear_design, lstsq_factor, optimize_factor

log = logging.getLogger(__name__)
StepCallback = Callable[[int, float], "bool | None"]


@dataclass
class SolveResult:
    """A solved edit: the delta, its loss curve and timings."""

    delta: LowRankDelta
    losses: list[float] = field(default_factory=list)  # optimisation loss per step (L1 or L2)
    closed_form_loss: float = float("nan")  # the same loss at the closed-form solution
    goal_loss: float = float("nan")  # final loss
    seconds: float = 0.0
    cancelled: bool = False


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    inside = torch.zeros(shape, dtype=torch.bool)
    y0, y1, x0, x1 = box
    inside[y0:y1, x0:x1] = True
    return inside


def _goal_loss(pred: torch.Tensor, goal: Goal, kind: str, preserve: float) -> torch.Tensor:
    """Loss to the goal inside the box, plus `preserve` x loss to the unedited values outside it.

    The box is a rectangle, so its part is a slice (a view) and the outside part is the whole minus it:
    no boolean indexing, which costs as much as the rest of a factored Adam step.
    """
    y0, y1, x0, x1 = goal.box
    err = (pred - goal.values).abs() if kind == "l1" else (pred - goal.values) ** 2
    loss = err[..., y0:y1, x0:x1].mean()
    n_all, n_in = pred[0, 0].numel(), (y1 - y0) * (x1 - x0)
    if preserve > 0 and n_in < n_all:
        keep = (pred - goal.obs.values).abs() if kind == "l1" else (pred - goal.obs.values) ** 2
        outside = keep.sum() - keep[..., y0:y1, x0:x1].sum()
        loss = loss + preserve * outside / (keep.numel() // n_all * (n_all - n_in))
    return loss


def refinement_note(losses: Sequence[float], config: UpdateConfig) -> str:
    """A warning when Adam, warm-started from the closed form, never beat it ("" otherwise). Adam moves every
    factor entry by about `lr` a step; where the closed form sits in a narrow valley of the loss, every step
    overshoots (examples/close-mouth at rank 4 and lr 0.05, whose factor entries are no smaller than at rank 1),
    the best iterate is the start, and the user should know the refinement did nothing."""
    if config.method != "optimize" or not config.warm_start or len(losses) < 2 or min(losses[1:]) < losses[0]:
        return ""
    return (f"no Adam step improved on the closed-form start (loss {losses[0]:.4g} after {len(losses) - 1} steps at "
            f"lr {config.lr:g}): the update is the closed form; a lower lr (e.g. {config.lr / 10:g}) lets Adam refine it")


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block inside with one intra-op thread, restoring the previous count.

    A solve is hundreds of tiny one-image steps: with several threads each step pays OpenMP
    synchronisation, and when another process shares the cores it stalls (measured: 20 s instead
    of 1.5 s for the default edit on a busy 2-core machine).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _factored_block_output(
    block: nn.Module,
    weight_module: nn.Module,
    spec: LayerSpec,
    w0: torch.Tensor,
    dirs: torch.Tensor,
    obs: Observation,
    reference: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`reference(factor)` (the block's output with weight W0 + L D) at the cost of a rank-r layer.

    The weight module's output is bilinear in (weight, keys) with the key axis contracted against
    the keys' channels, so op(W0 + L D, k) = op(W0, k) + op(L, D k) - op(0, D k): the first term is
    the recorded `obs.linear`, the others run the module on r projected channels instead of C_in.
    The block then runs with that output substituted for its weight module's (and the full weight
    in place, for whatever else reads it, e.g. StyleGAN2's demodulation). Each Adam step costs a
    fraction of a full layer. The identity is checked once on a random factor against `reference`;
    a module for which it does not hold (grouped convolutions, a weight used twice) keeps `reference`.
    """
    if obs.keys.dim() < 2 or obs.keys.shape[1] != dirs.shape[1]:
        return reference
    projected = torch.einsum("rc,bc...->br...", dirs, obs.keys)  # (B, r, *key grid)
    shape = list(w0.shape)
    shape[spec.key_axis] = dirs.shape[0]
    try:
        with torch.no_grad():  # op(0, D k): the module's constant part (its bias), to cancel
            offset = call_with_weight(weight_module, spec.param_name, w0.new_zeros(shape), projected)
    except Exception as exc:  # a module whose forward does not accept r channels: keep the reference path
        log.info("layer %s: factored solve unavailable (%s); using the full layer", spec.name, exc)
        return reference

    def fast(factor: torch.Tensor) -> torch.Tensor:
        change = call_with_weight(weight_module, spec.param_name, factor, projected) - offset
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        with override_forward(weight_module, lambda *_a, **_k: obs.linear + change):
            return call_with_weight(block, spec.weight_path, weight, *obs.args, **obs.kwargs)

    probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype).to(w0.device) * w0.std()
    try:
        with torch.no_grad():
            want, got = reference(probe), fast(probe)
        if want.shape == got.shape and float((want - got).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6:
            return fast
        log.info("layer %s: the factored solve does not match the full layer; using the full layer", spec.name)
    except Exception as exc:
        log.info("layer %s: factored solve unavailable (%s); using the full layer", spec.name, exc)
    return reference


def solve_update(
    model: nn.Module,
    spec: LayerSpec,
    dirs: torch.Tensor,
    goal: Goal,
    config: UpdateConfig,
    on_step: StepCallback | None = None,
) -> SolveResult:
    """Fit the factor L of W = W0 + L D to the goal, W0 being the model's current weight.

    The closed form (least squares on the linear output in the loss box) is exact for a linear
    tail and warm-starts the constrained Adam optimisation of the block's real output.
    """
    t0 = time.perf_counter()
    weight_module = get_module(model, spec.weight_module)
    block = get_module(model, spec.name)
    w0 = getattr(weight_module, spec.param_name).detach()
    dirs = dirs.to(w0.dtype)
    keys = goal.obs.keys
    zero = torch.zeros_like(w0)

    def linear_change(delta: torch.Tensor) -> torch.Tensor:
        return call_with_weight(weight_module, spec.param_name, delta, keys) - call_with_weight(weight_module, spec.param_name, zero, keys)

    with torch.no_grad():
        design = linear_design(linear_change, dirs, tuple(w0.shape), spec.key_axis)  # (P, r*T)
        inside = _box_mask(tuple(goal.linear.shape[2:]), goal.box)
        residual = (goal.linear - goal.obs.linear).movedim(1, -1).reshape(-1, goal.linear.shape[1])
        rows = inside.reshape(-1).to(design.device)
        # inside rows fit the goal; outside rows (weighted by preserve, per-position like the loss) ask for no change
        n_in, n_out = int(rows.sum()), int((~rows).sum())
        scale = (config.preserve * n_in / max(n_out, 1)) ** 0.5
        a = torch.cat([design[rows], scale * design[~rows]]) if scale > 0 else design[rows]
        b = torch.cat([residual[rows], torch.zeros_like(residual[~rows])]) if scale > 0 else residual[rows]
        factor0 = lstsq_factor(a, b, dirs.shape[0], tuple(w0.shape), spec.key_axis, config.ridge)

    def full_block_output(factor: torch.Tensor) -> torch.Tensor:  # the block run with the whole weight
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        return call_with_weight(block, spec.weight_path, weight, *goal.obs.args, **goal.obs.kwargs)

    block_output = _factored_block_output(block, weight_module, spec, w0, dirs, goal.obs, full_block_output)

    def loss_fn(factor: torch.Tensor) -> torch.Tensor:
        return _goal_loss(block_output(factor), goal, config.loss, config.preserve)

    with torch.no_grad():
        cf_loss = float(loss_fn(factor0))
    result = SolveResult(LowRankDelta(spec.param_path, spec.key_axis, factor0, dirs), closed_form_loss=cf_loss, goal_loss=cf_loss)
    if config.method == "optimize" and config.steps > 0:
        cancelled = []

        def step_cb(step: int, loss: float) -> bool:
            stop = bool(on_step(step, loss)) if on_step is not None else False
            if stop:
                cancelled.append(step)
            return stop

        start = factor0 if config.warm_start else torch.zeros_like(factor0)
        with single_thread():
            factor, losses = optimize_factor(loss_fn, start, config.steps, config.lr, step_cb)
        result = SolveResult(LowRankDelta(spec.param_path, spec.key_axis, factor, dirs), losses, cf_loss,
                             min(losses), cancelled=bool(cancelled))
        note = refinement_note(losses, config)
        if note:
            log.warning(note)
    if not result.delta.is_finite():
        raise SolveError("the solved update holds NaN or infinite values; lower the learning rate or steps")
    result.seconds = time.perf_counter() - t0
    return result
