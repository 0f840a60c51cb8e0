"""Every setting of the solve (solve.py) against a float64 NumPy re-implementation written here, on a layer
whose block is its 1x1 convolution alone (the value is the linear output, so the whole objective is known in
closed form): the loss kind, the preserve weight, the ridge, the box, warm start, the Adam trajectory,
cancelling, refusing non-finite results and the thread count restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import KeysAreTheLatent

from model_rewrite.config import UpdateConfig
from model_rewrite.errors import SolveError
from model_rewrite.goals import Goal, Observation, observe
from model_rewrite.layers import LayerSpec
from model_rewrite.solve import _goal_loss, single_thread, solve_update

SPEC = LayerSpec("body", "body.0", key_axis=1)
BOX = (1, 3, 1, 4)  # 2 x 3 of the 4 x 5 value grid


def OneByOne() -> KeysAreTheLatent:
    return KeysAreTheLatent(3, 2, (4, 5))


def _setup(box=BOX):
    model = OneByOne().eval()
    z = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    obs = observe(model, SPEC, z)
    target = obs.linear + torch.randn(obs.linear.shape, generator=torch.Generator().manual_seed(2))
    dirs = torch.linalg.qr(torch.randn(3, 2, generator=torch.Generator().manual_seed(3)))[0].T.contiguous()
    return model, Goal(obs, target.clone(), target.clone(), box), dirs


def _rows(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) -> (H * W, C) float64, positions in row order."""
    return t[0].double().permute(1, 2, 0).reshape(-1, t.shape[1]).numpy()


def _inside(box, h, w) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m.reshape(-1)


def _np_problem(goal: Goal, dirs: torch.Tensor):
    proj = _rows(goal.obs.keys) @ dirs.double().numpy().T  # (P, r): D k at every position
    return proj, _rows(goal.obs.linear), _rows(goal.linear), _inside(goal.box, *goal.linear.shape[2:])


def _np_closed_form(goal, dirs, preserve, ridge) -> np.ndarray:
    """X (r, C_out): least squares inside the box, `preserve` (per position) asking for no change outside."""
    proj, base, want, inside = _np_problem(goal, dirs)
    n_in, n_out = inside.sum(), (~inside).sum()
    scale = np.sqrt(preserve * n_in / max(n_out, 1))
    a = np.concatenate([proj[inside], scale * proj[~inside]])
    b = np.concatenate([(want - base)[inside], np.zeros(((~inside).sum(), base.shape[1]))])
    gram = a.T @ a
    lam = ridge * gram.diagonal().mean()
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), a.T @ b)


def _np_loss(goal, dirs, x, kind, preserve) -> float:
    proj, base, want, inside = _np_problem(goal, dirs)
    change = proj @ x
    f = np.abs if kind == "l1" else np.square
    loss = f(base + change - want)[inside].mean()
    if preserve > 0 and (~inside).any():
        loss += preserve * f(change)[~inside].mean()
    return float(loss)


def _x(result) -> np.ndarray:
    return result.delta.factor.double().numpy()[:, :, 0, 0].T  # (C_out, r, 1, 1) -> (r, C_out)


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("preserve,ridge", [(0.0, 0.0), (1.0, 1e-4), (3.0, 0.5)])
def test_closed_form_factor_and_loss_match_numpy(kind, preserve, ridge):
    model, goal, dirs = _setup()
    w0 = model.body[0].weight.detach().clone()
    res = solve_update(model, SPEC, dirs, goal, UpdateConfig(method="closed_form", loss=kind, preserve=preserve, ridge=ridge))
    x = _np_closed_form(goal, dirs, preserve, ridge)
    np.testing.assert_allclose(_x(res), x, rtol=2e-4, atol=2e-5)
    assert res.closed_form_loss == pytest.approx(_np_loss(goal, dirs, x, kind, preserve), rel=1e-4)
    assert res.goal_loss == res.closed_form_loss and res.losses == [] and res.cancelled is False
    assert (res.delta.param_path, res.delta.key_axis, res.delta.rank) == ("body.0.weight", 1, 2)
    assert torch.equal(res.delta.dirs, dirs) and res.seconds > 0
    assert torch.equal(model.body[0].weight, w0), "solving does not change the model"


def test_a_box_covering_the_whole_map_fits_everywhere_and_ignores_preserve():
    _, goal, dirs = _setup(box=(0, 4, 0, 5))
    model = OneByOne().eval()
    a = solve_update(model, SPEC, dirs, goal, UpdateConfig(method="closed_form", preserve=0.0, ridge=0.0))
    b = solve_update(model, SPEC, dirs, goal, UpdateConfig(method="closed_form", preserve=5.0, ridge=0.0))
    np.testing.assert_allclose(_x(a), _np_closed_form(goal, dirs, 0.0, 0.0), rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(a.delta.factor, b.delta.factor)
    assert a.closed_form_loss == pytest.approx(b.closed_form_loss)


def _np_adam(goal, dirs, x0, steps, lr, preserve, b1=0.9, b2=0.999, eps=1e-8) -> list[float]:
    """Losses of Adam on the L2 objective, gradient written out by hand."""
    proj, base, want, inside = _np_problem(goal, dirs)
    c = base.shape[1]
    x, m, v, losses = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), []
    for t in range(steps + 1):
        losses.append(_np_loss(goal, dirs, x, "l2", preserve))
        if t == steps:
            break
        change = proj @ x
        grad = proj[inside].T @ (2 * (base + change - want)[inside]) / (c * inside.sum())
        grad += preserve * proj[~inside].T @ (2 * change[~inside]) / (c * (~inside).sum())
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        x = x - lr * (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
    return losses


@pytest.mark.parametrize("warm_start", [True, False])
def test_the_adam_solve_follows_adam_on_the_objective(warm_start):
    model, goal, dirs = _setup()
    cfg = UpdateConfig(steps=6, lr=0.05, loss="l2", preserve=0.5, ridge=1e-4, warm_start=warm_start)
    res = solve_update(model, SPEC, dirs, goal, cfg)
    x_cf = _np_closed_form(goal, dirs, 0.5, 1e-4)
    want = _np_adam(goal, dirs, x_cf if warm_start else np.zeros_like(x_cf), 6, 0.05, 0.5)
    np.testing.assert_allclose(res.losses, want, rtol=1e-4)
    assert res.closed_form_loss == pytest.approx(_np_loss(goal, dirs, x_cf, "l2", 0.5), rel=1e-4)
    assert res.goal_loss == min(res.losses)
    assert res.goal_loss == pytest.approx(_np_loss(goal, dirs, _x(res), "l2", 0.5), rel=1e-4)  # the factor returned
    if not warm_start:
        assert res.losses[-1] < res.losses[0]  # from zero, Adam moves towards the goal
        assert res.losses[0] == pytest.approx(_np_loss(goal, dirs, np.zeros_like(x_cf), "l2", 0.5), rel=1e-5)


def test_the_l1_loss_is_the_mean_absolute_error_at_every_step():
    model, goal, dirs = _setup()
    seen = []
    res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=3, loss="l1", preserve=2.0, warm_start=False),
                       on_step=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == [0, 1, 2, 3] and [l for _, l in seen] == res.losses
    assert res.losses[0] == pytest.approx(_np_loss(goal, dirs, np.zeros((2, 2)), "l1", 2.0), rel=1e-5)
    assert res.goal_loss == pytest.approx(_np_loss(goal, dirs, _x(res), "l1", 2.0), rel=1e-4)


def test_cancel_stops_the_solve_in_one_thread():
    model, goal, dirs = _setup()
    threads = []

    def on_step(step, loss):
        threads.append(torch.get_num_threads())
        return step >= 2

    res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=50), on_step)
    assert res.cancelled is True and len(res.losses) == 3 and threads == [1, 1, 1]
    res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=2))
    assert res.cancelled is False and len(res.losses) == 3


# The two tests below start OpenMP threads (torch.set_num_threads(2)); scripts/mutation.py leaves them out, since
# mutmut forks each mutant from its own process and a fork after that hangs. What they test, solve.single_thread,
# is a decorated function, which mutmut does not mutate anyway.


def test_the_thread_count_comes_back_after_a_solve():
    model, goal, dirs = _setup()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = []
        res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=3),
                           lambda step, loss: threads.append(torch.get_num_threads()))
        assert threads == [1, 1, 1, 1] and len(res.losses) == 4 and torch.get_num_threads() == 2
        solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=50), lambda step, loss: True)  # cancelled at once
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_single_thread_restores_the_count_even_when_the_block_raises():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with single_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_non_finite_solution_is_refused():
    model, goal, dirs = _setup()
    bad = Goal(goal.obs, goal.values, goal.linear * float("inf"), goal.box)
    with pytest.raises(SolveError, match="^the solved update holds NaN or infinite values; lower the learning rate or steps$"):
        solve_update(model, SPEC, dirs, bad, UpdateConfig(method="closed_form"))


def test_goal_loss_by_hand():
    """pred [[1, 2], [3, 4]], goal 0, unedited 1, box = the top-left cell."""
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    obs = Observation((), {}, torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    goal = Goal(obs, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), (0, 1, 0, 1))
    # inside |1 - 0| = 1; outside |2-1|, |3-1|, |4-1| average 2 (L1) and (1 + 4 + 9) / 3 (L2)
    assert float(_goal_loss(pred, goal, "l1", 0.5)) == pytest.approx(1 + 0.5 * 2)
    assert float(_goal_loss(pred, goal, "l2", 0.5)) == pytest.approx(1 + 0.5 * 14 / 3)
    assert float(_goal_loss(pred, goal, "l1", 0.0)) == pytest.approx(1.0)
    whole = Goal(obs, goal.values, goal.linear, (0, 2, 0, 2))
    assert float(_goal_loss(pred, whole, "l1", 3.0)) == pytest.approx(2.5)  # nothing outside the box
    assert float(_goal_loss(pred, whole, "l2", 0.0)) == pytest.approx(7.5)
    # two channels: the outside term is averaged over channels and outside positions
    pred2, obs2 = torch.cat([pred, 2 * pred], 1), Observation((), {}, obs.keys, torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))
    goal2 = Goal(obs2, torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), (0, 1, 0, 1))
    outside = (1 + 2 + 3 + 3 + 5 + 7) / 6
    assert float(_goal_loss(pred2, goal2, "l1", 1.0)) == pytest.approx((1 + 2) / 2 + outside)


class _Gain(torch.nn.Module):
    """A block that takes a keyword: value = gain * conv(x)."""

    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        return self.conv(x) * gain


class _GainModel(torch.nn.Module):
    latent_shape = (3, 4, 5)

    def __init__(self) -> None:
        super().__init__()
        self.body = _Gain(OneByOne().body[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z, gain=2.0)


def test_a_block_called_with_keywords_is_solved_with_them():
    model = _GainModel().eval()
    spec = LayerSpec("body", "body.conv", key_axis=1)
    z = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    obs = observe(model, spec, z)
    assert obs.kwargs == {"gain": 2.0}
    target = obs.linear + torch.randn(obs.linear.shape, generator=torch.Generator().manual_seed(2))
    goal = Goal(obs, 2.0 * target, target, BOX)
    dirs = torch.linalg.qr(torch.randn(3, 2, generator=torch.Generator().manual_seed(3)))[0].T.contiguous()
    res = solve_update(model, spec, dirs, goal, UpdateConfig(steps=2, loss="l2", preserve=0.5))
    x = _np_closed_form(goal, dirs, 0.5, 1e-4)
    proj, base, want, inside = _np_problem(goal, dirs)
    err = np.square(2.0 * (base + proj @ x - want))[inside].mean() + 0.5 * np.square(2.0 * proj @ x)[~inside].mean()
    assert res.closed_form_loss == pytest.approx(err, rel=1e-4) and res.losses[0] == res.closed_form_loss


def test_the_solve_uses_the_factored_path_leaves_the_global_rng_alone_and_reports_its_result(caplog):
    import logging

    model, goal, dirs = _setup()
    torch.manual_seed(123)
    want_next = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level(logging.INFO, logger="model_rewrite.solve"):
        res = solve_update(model, SPEC, dirs.double(), goal, UpdateConfig(steps=1))
    assert torch.equal(torch.rand(3), want_next), "a solve draws nothing from the global generator"
    assert caplog.records == [], "the 1x1 layer takes the factored path"
    assert len(res.losses) == 2 and res.cancelled is False and res.closed_form_loss == res.losses[0]
    assert res.delta.dirs.dtype == torch.float32 and res.delta.param_path == "body.0.weight"
    assert 0 < res.seconds < 60
    zero = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=0))
    assert zero.losses == [] and zero.goal_loss == zero.closed_form_loss and zero.cancelled is False


def test_preserve_with_a_single_position_outside_the_box():
    model = KeysAreTheLatent(3, 2, (1, 2))
    spec = LayerSpec("body", "body.0", key_axis=1)
    z = torch.randn(1, 3, 1, 2, generator=torch.Generator().manual_seed(1))
    obs = observe(model, spec, z)
    target = obs.linear + torch.randn(obs.linear.shape, generator=torch.Generator().manual_seed(2))
    goal = Goal(obs, target.clone(), target.clone(), (0, 1, 0, 1))  # one position in the box, one outside
    dirs = torch.eye(3)[:1]  # rank 1: two rows (in, out) for one unknown per channel, so the outside weight counts
    res = solve_update(model, spec, dirs, goal, UpdateConfig(method="closed_form", preserve=2.0, ridge=0.0))
    np.testing.assert_allclose(_x(res), _np_closed_form(goal, dirs, 2.0, 0.0), rtol=2e-4, atol=2e-5)


class _Strict(torch.nn.Conv2d):
    """A convolution that refuses inputs of another width than its own (so not the r projected channels)."""

    def forward(self, x):
        if x.shape[1] != self.in_channels:
            raise ValueError(f"wants {self.in_channels} channels")
        return super().forward(x)


class _Refuses(torch.nn.Module):
    """A block that refuses to run its convolution under an overridden forward (the factored path's probe fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if "forward" in self.conv.__dict__:
            raise RuntimeError("no overrides here")
        return torch.tanh(y)


class _Body(torch.nn.Module):
    latent_shape = (8, 6, 6)

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.body = block

    def forward(self, z):
        return self.body(z)


def _factored(model, spec, r=2):
    from model_rewrite.hooks import call_with_weight, get_module
    from model_rewrite.solve import _factored_block_output
    from model_rewrite.update import delta_from_factors

    obs = observe(model, spec, torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(3)))
    w0 = getattr(get_module(model, spec.weight_module), spec.param_name).detach()
    dirs = torch.linalg.qr(torch.randn(w0.shape[spec.key_axis], r, generator=torch.Generator().manual_seed(4)))[0].T

    def reference(factor):
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        return call_with_weight(get_module(model, spec.name), spec.weight_path, weight, *obs.args, **obs.kwargs)

    fast = _factored_block_output(get_module(model, spec.name), get_module(model, spec.weight_module), spec, w0, dirs, obs,
                                  reference)
    return reference, fast


@pytest.mark.parametrize("kind, message", [
    ("grouped", None),  # its weight reads 4 of the 8 key channels: not the factored shape, silently the full layer
    ("twice", "layer body: the factored solve does not match the full layer; using the full layer"),
    ("refuses", "layer body: factored solve unavailable (no overrides here); using the full layer"),
    ("strict", "layer body: factored solve unavailable (wants 8 channels); using the full layer"),
])
def test_each_fallback_to_the_full_layer_says_why(kind, message, caplog):
    import logging

    from test_update import _Twice

    torch.manual_seed(0)
    block = {"grouped": lambda: torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.Tanh()),
             "twice": _Twice, "refuses": _Refuses,
             "strict": lambda: torch.nn.Sequential(_Strict(8, 8, 3, padding=1), torch.nn.Tanh())}[kind]()
    model = _Body(block).eval()
    spec = LayerSpec("body", "body.0" if kind in ("grouped", "strict") else "body.conv", key_axis=1)
    with caplog.at_level(logging.INFO, logger="model_rewrite.solve"), torch.no_grad():
        reference, fast = _factored(model, spec)
    assert fast is reference
    assert [r.getMessage() for r in caplog.records] == ([message] if message else [])


class _LinearBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 4)
        with torch.no_grad():  # large outputs: the probe's tolerance must be relative to them
            self.lin.weight.mul_(1000.0)
            self.lin.bias.fill_(500.0)

    def forward(self, x, gain=1.0):
        return torch.tanh(self.lin(x) / 3000.0) * 3000.0 * gain


class _LinearModel(torch.nn.Module):
    latent_shape = (6,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _LinearBlock()

    def forward(self, z):
        return self.body(z, gain=2.0)


def test_a_linear_layer_with_a_bias_large_outputs_and_keywords_takes_the_factored_path():
    model = _LinearModel().eval()
    reference, fast = _factored(model, LayerSpec("body", "body.lin", key_axis=1))
    assert fast is not reference
    factor = torch.randn(4, 2, generator=torch.Generator().manual_seed(9)) * 100
    torch.testing.assert_close(fast(factor), reference(factor), rtol=1e-5, atol=1e-2)


def test_a_layer_with_tiny_outputs_takes_the_factored_path_too():
    model = _LinearModel().eval()
    with torch.no_grad():
        model.body.lin.weight.mul_(1e-9)  # outputs around 1e-3: the probe's absolute tolerance (1e-6) counts
        model.body.lin.bias.mul_(1e-9)
    reference, fast = _factored(model, LayerSpec("body", "body.lin", key_axis=1))
    assert fast is not reference


def test_a_refinement_that_never_beats_the_closed_form_says_so(caplog):
    import logging

    model, goal, dirs = _setup()
    with caplog.at_level(logging.WARNING, logger="model_rewrite.solve"):
        res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=4, lr=10.0))  # every step overshoots
    assert min(res.losses[1:]) > res.losses[0] and res.goal_loss == res.closed_form_loss
    (record,) = caplog.records
    assert "no Adam step improved on the closed-form start" in record.getMessage() and "a lower lr (e.g. 1)" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model_rewrite.solve"):
        res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=20, lr=1e-3, loss="l1"))
    assert min(res.losses[1:]) < res.losses[0]  # the L1 objective improves on the least-squares start
    assert caplog.records == []


def test_the_refinement_note_speaks_only_of_a_warm_started_adam_refinement():
    from model_rewrite.solve import refinement_note

    flat = [1.0, 1.5, 2.0]  # no step below the start
    assert refinement_note(flat, UpdateConfig()).startswith("no Adam step improved")
    assert refinement_note(flat, UpdateConfig(method="reference")) == ""  # the authors' algorithm starts from W0
    assert refinement_note(flat, UpdateConfig(warm_start=False)) == ""
    assert refinement_note([1.0, 0.9], UpdateConfig()) == "" and refinement_note([1.0], UpdateConfig()) == ""
