"""Pure math of the weight update W = W0 + L D: factors, projections, closed forms and the constrained solve.

Shapes: a weight has its key axis (C_in) at `key_axis`; D is (r, C_in) with orthonormal rows;
the factor L has the weight's shape with the key axis of size r.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .directions import solve_cov


def delta_from_factors(factor: torch.Tensor, dirs: torch.Tensor, key_axis: int) -> torch.Tensor:
    """The dense weight change L D: factor (..r at key_axis..), dirs (r, C_in) -> weight-shaped delta."""
    return (factor.movedim(key_axis, -1) @ dirs).movedim(-1, key_axis)


def factor_from_delta(delta: torch.Tensor, dirs: torch.Tensor, key_axis: int) -> torch.Tensor:
    """Coordinates of a weight-shaped delta along orthonormal `dirs` (the inverse of delta_from_factors
    on span(dirs))."""
    return (delta.movedim(key_axis, -1) @ dirs.T).movedim(-1, key_axis)


def project_rows(weight: torch.Tensor, dirs: torch.Tensor, key_axis: int) -> torch.Tensor:
    """Part of `weight` that reads keys lying in span(dirs). dirs: (r, C_in), orthonormal rows.

    Returns a tensor shaped like `weight`. Idempotent: applying it twice equals applying it once.
    """
    return delta_from_factors(factor_from_delta(weight, dirs, key_axis), dirs, key_axis)


def closed_form_insert(
    weight: torch.Tensor, cov: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, eig_floor: float = 0.0
) -> torch.Tensor:
    """Rank-r OLAM insertion for a linear layer: the delta with (W0 + delta) k*_i = v*_i for every i.

    weight: (C_out, C_in); cov: (C_in, C_in); keys: (r, C_in); values: (r, C_out) -> delta (C_out, C_in).
    delta = (V* - W0 K*)(K*^T C^-1 K*)^-1 (C^-1 K*)^T, which changes no key that is orthogonal to
    every k*_i in the C^-1 metric.
    """
    k = keys.to(torch.float64).T  # (C_in, r)
    d = solve_cov(cov, k, eig_floor) if eig_floor > 0 else torch.linalg.solve(cov.to(torch.float64), k)
    residual = values.to(torch.float64).T - weight.to(torch.float64) @ k  # (C_out, r)
    gram = k.T @ d  # (r, r)
    lam = torch.linalg.solve(gram.T, residual.T).T  # residual @ gram^-1
    return (lam @ d.T).to(weight.dtype)


def linear_design(
    op: Callable[[torch.Tensor], torch.Tensor],
    dirs: torch.Tensor,
    weight_shape: tuple[int, ...],
    key_axis: int,
) -> torch.Tensor:
    """Columns of the linear map factor -> op(delta_from_factors(factor, dirs)), one per (r, tap).

    `op(delta)` must return the change of the layer's output (B, C_out, *spatial) or (B, C_out)
    caused by a weight change `delta`, linear in `delta`. Output channels are independent (each
    reads only its own slice of the factor), so the design is shared by all of them.
    Returns (P, r * T): P = B * spatial positions, T = taps (kernel positions).
    The out axis is the non-key one of the first two axes.
    """
    out_axis = 1 - key_axis
    r = dirs.shape[0]
    c_out = weight_shape[out_axis]
    tap_shape = weight_shape[2:]
    taps = int(torch.tensor(tap_shape).prod()) if tap_shape else 1
    m = r * taps
    cols = []
    for start in range(0, m, c_out):  # encode up to c_out basis elements per call, one per out channel
        idx = list(range(start, min(m, start + c_out)))
        basis = torch.zeros((c_out, r, taps), dtype=dirs.dtype, device=dirs.device)
        for ch, b in enumerate(idx):
            basis[ch, b // taps, b % taps] = 1.0
        factor = basis.reshape(c_out, r, *tap_shape)  # (C_out, r, *taps) = out axis first
        if out_axis == 1:
            factor = factor.transpose(0, 1)
        out = op(delta_from_factors(factor, dirs, key_axis))  # (B, C_out, ...)
        flat = out.movedim(1, -1).reshape(-1, c_out)  # (P, C_out)
        cols.append(flat[:, : len(idx)])
    return torch.cat(cols, dim=1)


def lstsq_factor(
    design: torch.Tensor,
    residual: torch.Tensor,
    r: int,
    weight_shape: tuple[int, ...],
    key_axis: int,
    ridge: float = 1e-4,
) -> torch.Tensor:
    """Least-squares factor: argmin ||design @ X - residual||^2 + ridge' ||X||^2, reshaped as a factor.

    design: (P, r*T); residual: (P, C_out) -> factor shaped like the weight with key axis r.
    `ridge` is relative to the mean diagonal of design^T design.
    """
    a = design.detach().to(torch.float64)
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), a.T @ residual.detach().to(torch.float64))
    out_axis = 1 - key_axis
    tap_shape = weight_shape[2:]
    factor = x.T.reshape(weight_shape[out_axis], r, *tap_shape)  # (C_out, r, *taps)
    if out_axis == 1:
        factor = factor.transpose(0, 1)
    return factor.to(design.dtype).contiguous()


def adam_step(
    param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> None:
    """One Adam update (Kingma & Ba), in place on `param`, `m` and `v`; `step` counts from 1.

    The same arithmetic as `torch.optim.Adam` (tested against it). We keep this small function because
    creating a torch.optim optimizer imports torch's compiler stack on first use, which costs about
    3 s per process: more than a whole interactive edit on the CPU.
    """
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bias1, bias2 = 1 - b1**step, 1 - b2**step
    denom = (v.sqrt() / bias2**0.5).add_(eps)
    param.addcdiv_(m, denom, value=-lr / bias1)


def optimize_factor(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    factor0: torch.Tensor,
    steps: int,
    lr: float,
    on_step: Callable[[int, float], bool | None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Adam on the factor L of W0 + L D: the change stays in span(D) exactly at every step.

    `loss_fn(factor)` returns a scalar; `on_step(step, loss)` is called for every recorded loss
    (steps + 1 of them, the first before any update) and may return True to stop early (cancel).
    Returns the factor with the lowest loss seen and the loss curve.
    """
    factor = factor0.detach().clone().requires_grad_(True)
    m, v = torch.zeros_like(factor), torch.zeros_like(factor)
    best, best_loss, losses = factor0.detach().clone(), float("inf"), []
    for step in range(steps + 1):
        loss = loss_fn(factor)
        value = float(loss.detach())
        losses.append(value)
        if value < best_loss:
            best_loss, best = value, factor.detach().clone()
        stop = bool(on_step(step, value)) if on_step is not None else False
        if step == steps or stop:
            break
        (grad,) = torch.autograd.grad(loss, factor)
        with torch.no_grad():
            adam_step(factor, grad, m, v, step + 1, lr)
    return best, losses


@dataclass(frozen=True)
class LowRankDelta:
    """A weight change `delta_from_factors(factor, dirs, key_axis)` for the parameter `param_path`."""

    param_path: str  # state_dict key of the edited weight
    key_axis: int
    factor: torch.Tensor  # weight shape with the key axis of size r
    dirs: torch.Tensor  # (r, C_in)

    @property
    def rank(self) -> int:
        return int(self.dirs.shape[0])

    def dense(self) -> torch.Tensor:
        """The weight-shaped change."""
        return delta_from_factors(self.factor, self.dirs, self.key_axis)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.factor).all() and torch.isfinite(self.dirs).all())
