"""The authors' algorithm as `method="reference"` (reference.py): each published point checked against a
hand computation or a float64 re-implementation written here, on the tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import box_mask

from model_rewrite import KeyConfig, Rewriter, Selection, StatsConfig, UpdateConfig
from model_rewrite.goals import observe
from model_rewrite.reference import (copy_paste_goal, cropped_block, erase_goal, key_cells, optimize_weight,
                                     place_clip, positive_box, integer_centre, smoothed_resize)


def test_masks_are_resized_by_a_smoothed_bilinear_filter():
    # 4x4 -> 2x2: PIL's BILINEAR widens its triangle to radius 2 input pixels, so output cell 0 (centre at
    # input coordinate 1.0) weighs input pixels 0..3 by (0.75, 0.75, 0.25, 0) / 1.75 = (3/7, 3/7, 1/7, 0).
    one = torch.zeros(4, 4)
    one[2, 2] = 1.0
    out = smoothed_resize(one, (2, 2))
    assert out[0, 0] == pytest.approx((1 / 7) ** 2, abs=1 / 255)  # an area average would give 0 here
    assert out[1, 1] == pytest.approx((3 / 7) ** 2, abs=1 / 255)
    assert out[0, 1] == pytest.approx((1 / 7) * (3 / 7), abs=1 / 255)


def test_paste_centre_placement_and_key_cell_widening_by_hand():
    area = torch.zeros(8, 8)
    area[2:5, 1:4] = 0.5
    assert positive_box(area) == (2, 5, 1, 4) and integer_centre((2, 5, 1, 4)) == (3, 2)
    assert place_clip((3, 2), (2, 3), (8, 8)) == (2, 4, 1, 4)  # top-left = centre - size // 2
    assert place_clip((0, 7), (4, 4), (8, 8)) == (0, 4, 4, 8)  # clamped inside the grid
    assert key_cells((3, 7, 1, 6), (2, 2)) == ((1, 4, 0, 3), (2, 8, 0, 6))


def _reimplemented_loop(run, target, w0, dirs, steps, every, lr=0.05):
    """The published loop in float64, written from the description: Adam (beta 0.9, 0.999, eps 1e-8) on W;
    after step i, if i % every == 0 or i is the last, W = W0 + (W - W0) P with P = D^T D."""
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    p = dirs.T @ dirs
    for i in range(steps):
        wg = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((run(wg) - target).abs().mean(), wg)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (1 - 0.9 ** (i + 1))) / ((v / (1 - 0.999 ** (i + 1))).sqrt() + 1e-8)
        if i % every == 0 or i == steps - 1:
            w = w0 + (w - w0) @ p
    return w


def test_projection_schedule_and_last_iterate_match_a_reimplementation():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(6, 5, generator=g, dtype=torch.float64)  # 6 keys of width 5
    target = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w0 = torch.randn(3, 5, generator=g, dtype=torch.float64)  # a Linear weight (out, in): key axis 1
    dirs = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64))[0].T  # (2, 5) orthonormal
    run = lambda w: keys @ w.T  # noqa: E731
    got, losses, cancelled = optimize_weight(run, target, w0, dirs, key_axis=1, steps=23, project_every=10)
    want = _reimplemented_loop(run, target, w0, dirs, 23, 10)
    assert not cancelled and len(losses) == 23
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose((got - w0) @ (torch.eye(5, dtype=torch.float64) - dirs.T @ dirs), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12)
    # the schedule matters: projecting after every step is another trajectory
    assert not torch.allclose(_reimplemented_loop(run, target, w0, dirs, 23, 1), want, atol=1e-6)
    # the last iterate is returned even when an earlier one had a lower loss
    final_loss = float((run(got) - target).abs().mean())
    assert final_loss == pytest.approx(float((run(want) - target).abs().mean()))


@pytest.fixture
def rw(tmp_path):
    return Rewriter("tiny", cache_dir=tmp_path / "cache")


def test_the_layer_runs_on_the_cropped_key_map_so_border_cells_lose_their_neighbours(rw):
    spec = rw.spec("b16")  # ConvTranspose2d(16, 8, 4, stride 2, pad 1) -> BatchNorm -> ReLU, keys 8x8 -> values 16x16
    obs = observe(rw.model, spec, rw.latents([3]))
    crop = obs.keys[:, :, 2:5, 1:4]
    w = rw.model.b16.conv.weight
    got = cropped_block(rw.model, spec, obs, crop)(w)
    bn = rw.model.b16.norm
    lin = F.conv_transpose2d(crop, w, stride=2, padding=1)  # the crop alone: no contributions from outside it
    want = torch.relu((lin - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
                      * bn.weight[:, None, None] + bn.bias[:, None, None])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, obs.values[:, :, 4:10, 2:8], atol=1e-3)  # the full map's values differ at the border


def test_copy_paste_goal_uses_the_copy_values_resized_alpha_and_key_cells(rw):
    spec = rw.spec("b16")
    copy_obs, paste_obs = observe(rw.model, spec, rw.latents([1])), observe(rw.model, spec, rw.latents([2]))
    copy_mask, paste_mask = box_mask(32, 4, 12, 4, 12), box_mask(32, 18, 24, 16, 28)
    goal = copy_paste_goal(copy_obs, copy_mask, paste_obs, paste_mask)
    # by hand: at 16x16 the copy box smooths to rows/cols 1..6 (the filter spreads one cell outward)
    alpha = smoothed_resize(copy_mask, (16, 16))
    assert positive_box(alpha) == (1, 7, 1, 7)
    (y0, y1, x0, x1) = place_clip(integer_centre(positive_box(smoothed_resize(paste_mask, (16, 16)))), (6, 6), (16, 16))
    target = paste_obs.values.clone()
    a = alpha[1:7, 1:7]
    target[:, :, y0:y1, x0:x1] = (1 - a) * target[:, :, y0:y1, x0:x1] + a * copy_obs.values[:, :, 1:7, 1:7]
    (ky0, ky1, kx0, kx1), vb = key_cells((y0, y1, x0, x1), (2, 2))
    assert goal.value_box == vb
    torch.testing.assert_close(goal.values, target[:, :, vb[0]:vb[1], vb[2]:vb[3]])
    torch.testing.assert_close(goal.keys, paste_obs.keys[:, :, ky0:ky1, kx0:kx1])


def test_erase_zeroes_the_units_over_the_whole_key_map_and_fits_the_whole_output(rw):
    spec = rw.spec("b16")
    z = rw.latents([2])
    obs = observe(rw.model, spec, z)
    units = torch.tensor([0, 5])
    goal = erase_goal(rw.model, spec, z, obs, units)
    keys = obs.keys.clone()
    keys[:, units] = 0.0
    want = rw.model.b16(keys)  # the block's input is its key map in this model
    torch.testing.assert_close(goal.values, want)
    assert goal.value_box == (0, 16, 0, 16) and torch.equal(goal.keys, obs.keys)


def test_reference_solve_end_to_end_on_the_tiny_model(rw, monkeypatch):
    m = box_mask(32, 8, 20, 8, 20)
    spec = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m), Selection(4, m)],
                       update=UpdateConfig(method="reference"), keys=KeyConfig(rank=2),
                       stats=StatsConfig(num_samples=50))
    steps = []
    result = rw.solve(spec, on_step=lambda i, loss: steps.append(i))
    assert len(result.losses) == 2001 and steps == list(range(2001))
    assert result.delta.rank == 2 and result.delta.is_finite()
    assert result.goal_loss < result.losses[0]  # it fits its goal better than W0 does
    d = result.delta.dense()  # ConvTranspose2d: key axis 0; the change reads only span(D)
    dirs = result.delta.dirs
    flat = d.movedim(0, -1)
    torch.testing.assert_close(flat @ dirs.T @ dirs, flat, atol=1e-6, rtol=1e-5)
    # cancelling stops it at once, reported as cancelled
    assert rw.solve(spec, on_step=lambda i, loss: i >= 4).cancelled
    import model_rewrite.reference as reference

    monkeypatch.setattr(reference, "REFERENCE_STEPS", 30)  # the erase variant's path, briefly
    erase = dataclasses.replace(spec, copy=None, update=UpdateConfig(method="reference", erase=True, erase_units=3))
    result = rw.solve(erase)
    assert len(result.losses) == 30 and result.delta.is_finite() and result.goal_loss < result.losses[0]
