import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_rewrite.config import UpdateConfig
from model_rewrite.directions import key_directions
from model_rewrite.layers import resolve_layer
from model_rewrite.goals import copy_paste_goal, observe
from model_rewrite.update import (
    closed_form_insert,
    delta_from_factors,
    factor_from_delta,
    linear_design,
    lstsq_factor,
    optimize_factor,
    project_rows,
)
from model_rewrite.solve import solve_update
from helpers import box_mask

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


def test_copy_paste_goal_composites_the_copied_values_at_the_paste_centre(tiny):
    """The goal is (1 - a) v_paste + a v_copy inside the pasted box, written out by hand here."""
    spec = resolve_layer(tiny, "b16")  # values 16x16 for 32 px masks
    o1, o2 = (observe(tiny, spec, torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(s))) for s in (1, 2))
    copy = torch.zeros(32, 32)
    copy[4:12, 2:10] = torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) + 0.01
    goal = copy_paste_goal(o1, copy, o2, box_mask(32, 28, 32, 26, 32))  # centre near the corner: shifted inside
    a = F.interpolate(copy[None, None], size=(16, 16), mode="area")[0, 0][2:6, 1:5]
    assert goal.box == (12, 16, 12, 16)
    for got, paste, src in ((goal.values, o2.values, o1.values), (goal.linear, o2.linear, o1.linear)):
        want = paste.clone()
        want[:, :, 12:16, 12:16] = (1 - a) * paste[:, :, 12:16, 12:16] + a * src[:, :, 2:6, 1:5]
        assert torch.equal(got, want)


def test_constrained_optimisation_never_leaves_span_of_directions(tiny):
    spec = resolve_layer(tiny, "b16")
    z1, z2 = torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(1)), torch.randn(1, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    o1, o2 = observe(tiny, spec, z1), observe(tiny, spec, z2)
    mask = box_mask(32, 8, 20, 8, 20)
    goal = copy_paste_goal(o1, mask, o2, mask)
    keys = o2.keys[0].flatten(1).T
    cov = (keys.T @ keys / keys.shape[0]).double() + 1e-3 * torch.eye(16, dtype=D64)
    dirs = key_directions(keys, torch.ones(keys.shape[0]), cov, rank=2)
    for cfg in (UpdateConfig(steps=30, lr=0.05), UpdateConfig(steps=30, loss="l2", warm_start=False, preserve=0.0)):
        result = solve_update(tiny, spec, dirs, goal, cfg)
        delta = result.delta.dense()
        # the part of the change that reads keys orthogonal to span(D) is zero
        outside = delta - project_rows(delta, dirs.to(delta.dtype), spec.key_axis)
        assert outside.abs().max() < 1e-6 * max(delta.abs().max(), 1e-12)
        flat = delta.movedim(0, -1).reshape(-1, delta.shape[0])
        assert torch.linalg.matrix_rank(flat.double(), atol=1e-6 * float(flat.abs().max())) <= 2
        # the best iterate is returned, and Adam improved on its start (the closed form, or zero)
        assert result.goal_loss == min(result.losses) < result.losses[0]


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
    from model_rewrite.goals import Goal

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


# --- the factored Adam step: the block's output at W0 + L D at the cost of a rank-r layer ---------
def _sg2():
    from stylegan2_reference import rosinality_state_dict

    from model_rewrite.models.formats.rosinality import stylegan2_from_rosinality

    sd, latent_avg = rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=0)
    return stylegan2_from_rosinality({"g_ema": sd, "latent_avg": latent_avg}, "fixture")


def _reference_and_factored(model, spec, r=2):
    from model_rewrite.hooks import call_with_weight, get_module
    from model_rewrite.solve import _factored_block_output

    obs = observe(model, spec, torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(3)))
    w0 = getattr(get_module(model, spec.weight_module), spec.param_name).detach()
    dirs = torch.linalg.qr(torch.randn(w0.shape[spec.key_axis], r, generator=torch.Generator().manual_seed(4)))[0].T

    def reference(factor):
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        return call_with_weight(get_module(model, spec.name), spec.weight_path, weight, *obs.args, **obs.kwargs)

    fast = _factored_block_output(get_module(model, spec.name), get_module(model, spec.weight_module), spec, w0, dirs, obs, reference)
    shape = list(w0.shape)
    shape[spec.key_axis] = r
    return reference, fast, shape, w0


@pytest.mark.parametrize("which,layer", [("tiny", "b16"), ("tiny", "b32"), ("sg2", "b8.conv0"), ("sg2", "b16.conv1")])
def test_factored_step_equals_the_full_layer_in_value_and_gradient(tiny, which, layer):
    """ConvTranspose2d (key axis 0), StyleGAN2's upsampling and plain split convolutions (demodulated
    from the edited weight): the factored output and its gradient equal the full layer's."""
    model = tiny if which == "tiny" else _sg2()
    reference, fast, shape, w0 = _reference_and_factored(model, resolve_layer(model, layer))
    assert fast is not reference
    target = reference(torch.zeros(shape)).detach().flip(-1)  # a loss with a gradient everywhere
    for seed in range(3):
        factor = (torch.randn(shape, generator=torch.Generator().manual_seed(10 + seed)) * w0.std()).requires_grad_(True)
        want, got = reference(factor), fast(factor)
        scale = float(want.detach().abs().max())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)
        (g_want,) = torch.autograd.grad(((want - target) ** 2).sum(), factor)
        (g_got,) = torch.autograd.grad(((fast(factor) - target) ** 2).sum(), factor)
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5 * float(g_want.abs().max()))
    # the model itself is untouched: no forward override or hook is left behind
    assert all("forward" not in m.__dict__ and not m._forward_hooks for m in model.modules())


class _Twice(nn.Module):
    """A block that applies its convolution twice: the recorded output cannot stand in for both calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(torch.tanh(self.conv(x))))


@pytest.mark.parametrize("kind", ["grouped", "twice"])
def test_factored_step_falls_back_where_the_identity_does_not_hold(kind):
    """A grouped convolution does not contract the weight with all key channels, and a weight module
    called twice is not one linear output: both keep the full layer."""
    from model_rewrite.layers import LayerSpec

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Tanh()) if kind == "grouped" else _Twice()

    class Gen(nn.Module):
        latent_shape = (8, 6, 6)

        def __init__(self):
            super().__init__()
            self.body = block

        def forward(self, z):
            return self.body(z)

    model = Gen().eval()
    spec = LayerSpec("body", "body.0" if kind == "grouped" else "body.conv", key_axis=1)
    with torch.no_grad():
        reference, fast, _, _ = _reference_and_factored(model, spec)
    assert fast is reference
    assert all("forward" not in m.__dict__ for m in model.modules())


# --- the factor algebra and its solvers by hand and against NumPy ---------------------------------------
def test_factors_and_deltas_by_hand_for_both_key_axes():
    from model_rewrite.update import LowRankDelta

    dirs = torch.tensor([[0.0, 1.0, 0.0]])  # (r=1, C_in=3): reads key channel 1
    factor = torch.tensor([[2.0], [-3.0]])  # Linear (C_out=2, r=1)
    assert delta_from_factors(factor, dirs, 1).tolist() == [[0.0, 2.0, 0.0], [0.0, -3.0, 0.0]]
    w = torch.arange(6.0).reshape(2, 3)
    assert factor_from_delta(w, dirs, 1).tolist() == [[1.0], [4.0]]
    assert project_rows(w, dirs, 1).tolist() == [[0.0, 1.0, 0.0], [0.0, 4.0, 0.0]]
    # ConvTranspose2d layout (C_in, C_out, kh, kw): key axis 0
    ft = torch.arange(1.0, 5.0).reshape(1, 2, 1, 2)  # (r=1, C_out=2, 1, 2)
    dt = delta_from_factors(ft, dirs, 0)
    assert dt.shape == (3, 2, 1, 2) and torch.equal(dt[1], ft[0]) and dt[0].abs().sum() == 0 == dt[2].abs().sum()
    assert torch.equal(factor_from_delta(dt, dirs, 0), ft)
    d = LowRankDelta("x.weight", 0, ft, dirs)
    assert d.rank == 1 and torch.equal(d.dense(), dt) and d.is_finite()
    assert not LowRankDelta("x.weight", 0, ft, dirs * float("nan")).is_finite()
    assert not LowRankDelta("x.weight", 0, ft * float("inf"), dirs).is_finite()


def test_closed_form_with_an_eigenvalue_floor_on_singular_statistics():
    """C singular: with eig_floor > 0 the insertion uses the floored inverse, computed here with NumPy."""
    c = np.diag([4.0, 1.0, 0.0])
    w = np.arange(6.0).reshape(2, 3) / 5
    k, v = np.array([[1.0, 2.0, 0.5]]), np.array([[3.0, -1.0]])
    evals = np.maximum(np.diag(c), 1e-2 * 4.0)
    d = (k / evals).T  # C^-1 k* with the floor: (3, 1)
    want = ((v.T - w @ k.T) / (k @ d)) @ d.T
    got = closed_form_insert(torch.from_numpy(w), torch.from_numpy(c), torch.from_numpy(k), torch.from_numpy(v), 1e-2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose((w + got.numpy()) @ k.T, v.T, rtol=1e-10)
    # float32 inputs: computed in float64, returned in the weight's dtype
    got32 = closed_form_insert(torch.from_numpy(w).float(), torch.from_numpy(c).float(), torch.from_numpy(k).float(),
                               torch.from_numpy(v).float(), 1e-2)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key_axis", [0, 1])
def test_lstsq_factor_is_ridge_regression_relative_to_the_mean_diagonal(key_axis):
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(30, 6, generator=g), torch.randn(30, 2, generator=g)  # r=2 directions x 3 taps, C_out=2
    shape = (2, 5, 3, 1) if key_axis == 1 else (5, 2, 3, 1)
    for ridge in (0.0, 0.3):
        an, bn = a.double().numpy(), b.double().numpy()
        gram = an.T @ an
        x = np.linalg.solve(gram + ridge * gram.diagonal().mean() * np.eye(6), an.T @ bn)  # (r*T, C_out)
        f = lstsq_factor(a, b, 2, shape, key_axis, ridge)
        assert f.dtype == torch.float32 and f.is_contiguous()
        per_out = x.T.reshape(2, 2, 3, 1)  # (C_out, r, taps)
        want = per_out if key_axis == 1 else per_out.transpose(1, 0, 2, 3)
        np.testing.assert_allclose(f.numpy(), want, rtol=1e-5, atol=1e-6)


def test_adam_step_matches_torch_optim_adam_with_other_betas_and_eps():
    from model_rewrite.update import adam_step

    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(4, 3, generator=g, dtype=D64)
    grads = [torch.randn(4, 3, generator=g, dtype=D64) * 1e-3 for _ in range(5)]
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1, betas=(0.5, 0.9), eps=1e-3)
    ours, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for i, gr in enumerate(grads):
        ref.grad = gr.clone()
        opt.step()
        adam_step(ours, gr, m, v, i + 1, 0.1, betas=(0.5, 0.9), eps=1e-3)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-12)


def test_optimize_factor_follows_adam_keeps_the_best_iterate_and_reports_every_step():
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=D64)
    loss_fn = lambda f: ((f - target) ** 2).sum()  # noqa: E731
    ref = torch.zeros(2, 2, dtype=D64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=1.5)  # a large rate: the loss goes up again, so the best is not the last
    want = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(ref)
        want.append(float(loss.detach()))
        loss.backward()
        opt.step()
    want.append(float(loss_fn(ref.detach())))
    calls = []
    best, losses = optimize_factor(loss_fn, torch.zeros(2, 2, dtype=D64), steps=12, lr=1.5,
                                   on_step=lambda s, l: calls.append((s, l)))
    np.testing.assert_allclose(losses, want, rtol=1e-10)
    assert calls == list(enumerate(losses)) and len(losses) == 13
    assert float(loss_fn(best)) == min(losses) and min(losses) < losses[-1]
    # stopping at once keeps the start
    start = torch.ones(2, 2, dtype=D64)
    best, losses = optimize_factor(loss_fn, start, steps=5, lr=0.1, on_step=lambda s, l: True)
    assert losses == [float(loss_fn(start))] and torch.equal(best, start)


def test_closed_form_without_a_floor_solves_exactly_and_refuses_singular_statistics():
    c = _spd(4, 2).float()
    w, k, v = torch.randn(3, 4), torch.randn(1, 4), torch.randn(1, 3)
    d = np.linalg.solve(c.double().numpy(), k.double().numpy().T)  # (4, 1)
    want = ((v.double().numpy().T - w.double().numpy() @ k.double().numpy().T) / (k.double().numpy() @ d)) @ d.T
    got = closed_form_insert(w, c, k, v)  # float32 in, eig_floor 0: torch.linalg.solve in float64
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(torch.linalg.LinAlgError):
        closed_form_insert(w.double(), torch.diag(torch.tensor([4.0, 1.0, 1.0, 0.0], dtype=D64)), k.double(), v.double())


def test_lstsq_factor_default_ridge_and_a_small_design():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(30, 4, generator=g, dtype=D64), torch.randn(30, 2, generator=g, dtype=D64)
    assert torch.equal(lstsq_factor(a, b, 2, (2, 3, 2), 1), lstsq_factor(a, b, 2, (2, 3, 2), 1, ridge=1e-4))
    small = a * 1e-3  # mean diagonal of the Gram matrix ~ 3e-5: the ridge stays relative to it
    gram = small.numpy().T @ small.numpy()
    x = np.linalg.solve(gram + 0.3 * gram.diagonal().mean() * np.eye(4), small.numpy().T @ b.numpy())
    np.testing.assert_allclose(lstsq_factor(small, b, 2, (2, 3, 2), 1, 0.3).numpy(), x.T.reshape(2, 2, 2), rtol=1e-9)


def test_optimize_factor_keeps_the_first_of_equal_losses():
    """A loss whose value never changes (but whose gradient moves the factor): the start stays the best."""
    start = torch.zeros(3, dtype=D64)
    best, losses = optimize_factor(lambda f: (f - f.detach()).sum() + 1.0, start, steps=3, lr=0.5)
    assert losses == [1.0] * 4 and torch.equal(best, start)
