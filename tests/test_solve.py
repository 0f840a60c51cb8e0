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


def _inside(box, h=4, w=5) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m.reshape(-1)


def _np_problem(goal: Goal, dirs: torch.Tensor):
    proj = _rows(goal.obs.keys) @ dirs.double().numpy().T  # (P, r): D k at every position
    return proj, _rows(goal.obs.linear), _rows(goal.linear), _inside(goal.box)


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
    assert res.goal_loss == res.closed_form_loss and res.losses == [] and not res.cancelled
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


def test_cancel_stops_the_solve_and_the_thread_count_comes_back():
    model, goal, dirs = _setup()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = []

        def on_step(step, loss):
            threads.append(torch.get_num_threads())
            return step >= 2

        res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=50), on_step)
        assert res.cancelled and len(res.losses) == 3 and threads == [1, 1, 1]
        assert torch.get_num_threads() == 2
        res = solve_update(model, SPEC, dirs, goal, UpdateConfig(steps=2))
        assert not res.cancelled and len(res.losses) == 3 and torch.get_num_threads() == 2
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
    with pytest.raises(SolveError, match="NaN or infinite"):
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
