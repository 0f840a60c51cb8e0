import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_rewrite.config import UpdateConfig
from model_rewrite.directions import key_directions
from model_rewrite.layers import resolve_layer
from model_rewrite.targets import copy_paste_goal, observe
from model_rewrite.update import (
    closed_form_insert,
    delta_from_factors,
    factor_from_delta,
    linear_design,
    lstsq_factor,
    optimize_factor,
    project_rows,
)
from model_rewrite.rewrite import solve_update
from conftest import box_mask

D64 = torch.float64


def _spd(dim: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(500, dim, generator=torch.Generator().manual_seed(seed), dtype=D64)
    return a.T @ a / 500


@pytest.mark.parametrize("r", [1, 3])
def test_closed_form_stores_the_new_values(r):
    c, w = _spd(10), torch.randn(6, 10, dtype=D64)
    keys, values = torch.randn(r, 10, dtype=D64), torch.randn(r, 6, dtype=D64)
    delta = closed_form_insert(w, c, keys, values)
    torch.testing.assert_close((w + delta) @ keys.T, values.T, rtol=1e-8, atol=1e-8)
    assert torch.linalg.matrix_rank(delta) <= r


def test_closed_form_leaves_whitened_orthogonal_keys_unchanged():
    c, w = _spd(10, 1), torch.randn(6, 10, dtype=D64)
    k_star = torch.randn(1, 10, dtype=D64)
    delta = closed_form_insert(w, c, k_star, torch.randn(1, 6, dtype=D64))
    # keys k with k*^T C^-1 k = 0
    d = torch.linalg.solve(c, k_star[0])
    others = torch.randn(20, 10, dtype=D64)
    others = others - (others @ d)[:, None] * d / (d @ d)
    torch.testing.assert_close(delta @ others.T, torch.zeros(6, 20, dtype=D64), rtol=0, atol=1e-10)
    # ... while a similar key moves
    assert (delta @ (k_star[0] + 0.1 * torch.randn(10, dtype=D64))).abs().max() > 1e-3


def test_project_rows_is_idempotent_and_factor_round_trips():
    dirs = torch.linalg.qr(torch.randn(8, 2, dtype=D64))[0].T  # (2, 8) orthonormal rows
    w = torch.randn(8, 5, 4, 4, dtype=D64)  # ConvTranspose2d layout: key axis 0
    p = project_rows(w, dirs, 0)
    torch.testing.assert_close(project_rows(p, dirs, 0), p)
    torch.testing.assert_close(delta_from_factors(factor_from_delta(p, dirs, 0), dirs, 0), p)
    w2 = torch.randn(5, 8, 3, 3, dtype=D64)  # Conv2d layout: key axis 1
    p2 = project_rows(w2, dirs, 1)
    torch.testing.assert_close(project_rows(p2, dirs, 1), p2)
    assert factor_from_delta(p2, dirs, 1).shape == (5, 2, 3, 3)


@pytest.mark.parametrize("kind", ["convt", "conv", "linear"])
def test_linear_design_matches_explicit_layer_outputs(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "convt":
        layer, x, axis = nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=True), torch.randn(1, 6, 5, 5, generator=g), 0
    elif kind == "conv":
        layer, x, axis = nn.Conv2d(6, 4, 3, 1, 1, bias=True), torch.randn(1, 6, 5, 5, generator=g), 1
    else:
        layer, x, axis = nn.Linear(6, 4), torch.randn(7, 6, generator=g), 1
    layer = layer.double()
    x = x.double()
    dirs = torch.linalg.qr(torch.randn(6, 2, dtype=D64, generator=g))[0].T
    w = layer.weight.detach()
    op = lambda delta: torch.func.functional_call(layer, {"weight": delta}, (x,)) - torch.func.functional_call(layer, {"weight": torch.zeros_like(w)}, (x,))  # noqa: E731
    design = linear_design(op, dirs, tuple(w.shape), axis)
    factor = factor_from_delta(torch.randn_like(w), dirs, axis)
    out = op(delta_from_factors(factor, dirs, axis))
    c_out = out.shape[1]
    flat = out.movedim(1, -1).reshape(-1, c_out)
    # column layout: (r, taps) per output channel; the factor's slice for channel o
    fo = factor.movedim(1 - axis, 0).reshape(c_out, -1)  # (C_out, r*T)
    torch.testing.assert_close(design @ fo.T, flat, rtol=1e-9, atol=1e-9)
    # and lstsq_factor recovers the factor from exact outputs
    rec = lstsq_factor(design, flat, 2, tuple(w.shape), axis, ridge=0.0)
    torch.testing.assert_close(delta_from_factors(rec, dirs, axis), delta_from_factors(factor, dirs, axis), rtol=1e-6, atol=1e-6)


def test_constrained_optimisation_never_leaves_span_of_directions(tiny):
    spec = resolve_layer(tiny, "b16")
    z1, z2 = torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(1)), torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    o1, o2 = observe(tiny, spec, z1), observe(tiny, spec, z2)
    mask = box_mask(32, 8, 20, 8, 20)
    goal = copy_paste_goal(o1, mask, o2, mask)
    keys = o2.keys[0].flatten(1).T
    cov = (keys.T @ keys / keys.shape[0]).double() + 1e-3 * torch.eye(16, dtype=D64)
    dirs = key_directions(keys, torch.ones(keys.shape[0]), cov, rank=2)
    for cfg in (UpdateConfig(rank=2, steps=30, lr=0.05), UpdateConfig(rank=2, steps=30, loss="l2", warm_start=False, preserve=0.0)):
        result = solve_update(tiny, spec, dirs, goal, cfg)
        delta = result.delta.dense()
        # the part of the change that reads keys orthogonal to span(D) is zero
        outside = delta - project_rows(delta, dirs.to(delta.dtype), spec.key_axis)
        assert outside.abs().max() < 1e-6 * max(delta.abs().max(), 1e-12)
        flat = delta.movedim(0, -1).reshape(-1, delta.shape[0])
        assert torch.linalg.matrix_rank(flat.double(), atol=1e-6 * float(flat.abs().max())) <= 2
        assert result.goal_loss <= result.losses[0] + 1e-9


def test_optimisation_reduces_the_goal_loss_and_can_be_cancelled(tiny):
    target = torch.randn(3, 4)
    loss_fn = lambda f: ((f - target) ** 2).mean()  # noqa: E731
    f, losses = optimize_factor(loss_fn, torch.zeros(3, 4), steps=50, lr=0.1)
    assert losses[-1] < losses[0] / 2 and float(loss_fn(f)) == min(losses)
    _, short = optimize_factor(loss_fn, torch.zeros(3, 4), steps=50, lr=0.1, on_step=lambda s, l: s >= 4)
    assert len(short) == 5


def test_closed_form_solve_reaches_a_linear_goal(tiny):
    """On the linear output, the closed form fits the goal as well as rank r allows: a goal made by a
    known rank-1 change along D is recovered exactly."""
    spec = resolve_layer(tiny, "b16")
    z = torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(5))
    obs = observe(tiny, spec, z)
    dirs = torch.linalg.qr(torch.randn(16, 1, generator=torch.Generator().manual_seed(6)))[0].T
    w = tiny.b16.conv.weight.detach()
    true_factor = torch.randn(1, *w.shape[1:], generator=torch.Generator().manual_seed(7))
    new_linear = F.conv_transpose2d(obs.keys, w + delta_from_factors(true_factor, dirs, 0), stride=2, padding=1)
    from model_rewrite.targets import Goal

    goal = Goal(obs, tiny.b16.act(tiny.b16.norm(new_linear)), new_linear, (0, 16, 0, 16))
    result = solve_update(tiny, spec, dirs, goal, UpdateConfig(method="closed_form", ridge=0.0))
    torch.testing.assert_close(result.delta.dense(), delta_from_factors(true_factor, dirs, 0), rtol=1e-3, atol=1e-4)


def test_adam_step_matches_torch_optim_adam():
    from model_rewrite.update import adam_step

    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 3, generator=g)
    grads = [torch.randn(5, 3, generator=g) for _ in range(6)]
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05)
    ours, m, v = p0.clone(), torch.zeros(5, 3), torch.zeros(5, 3)
    for i, gr in enumerate(grads):
        ref.grad = gr.clone()
        opt.step()
        adam_step(ours, gr, m, v, i + 1, 0.05)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-6, atol=1e-7)
