"""What the selections mean at a layer (goals.py): keys under soft context masks, the copy-paste goal and the
erase choice, on hand-built observations whose right answers are written out by hand."""

from __future__ import annotations

import pytest
import torch

from helpers import KeysAreTheLatent, hook_count

from model_rewrite.errors import InvalidEdit
from model_rewrite.goals import Observation, context_keys, copy_paste_goal, erase_units


def _obs(values: torch.Tensor, keys: torch.Tensor | None = None) -> Observation:
    """An observation whose linear output equals its value (an identity tail)."""
    keys = keys if keys is not None else torch.zeros(1, 2, *values.shape[2:])
    return Observation((), {}, keys, values.clone(), values.clone())


def test_copy_paste_takes_the_patch_from_the_copy_location_and_centres_it_on_the_paste_region():
    g = 8
    copy_vals = torch.arange(2 * g * g, dtype=torch.float32).reshape(1, 2, g, g)
    paste_vals = torch.full((1, 2, g, g), -1.0)
    copy_mask = torch.zeros(g, g)
    copy_mask[1:3, 5:8] = 1.0  # a 2x3 patch at rows 1-2, columns 5-7 of the copy image
    paste_mask = torch.zeros(g, g)
    paste_mask[4:8, 0:4] = 1.0  # centre (6, 2): the 2x3 box is rows 5-6, columns 0-2 (round(2 - 1.5) = 0)
    goal = copy_paste_goal(_obs(copy_vals), copy_mask, _obs(paste_vals), paste_mask, tight=True)
    assert goal.box == (5, 7, 0, 3)
    want = paste_vals.clone()
    want[:, :, 5:7, 0:3] = copy_vals[:, :, 1:3, 5:8]
    assert torch.equal(goal.values, want) and torch.equal(goal.linear, want)
    assert copy_paste_goal(_obs(copy_vals), copy_mask, _obs(paste_vals), paste_mask, tight=False).box == (0, g, 0, g)


def test_copy_mask_is_the_alpha_of_the_composite():
    g = 4
    copy_vals, paste_vals = torch.full((1, 1, g, g), 3.0), torch.full((1, 1, g, g), 1.0)
    copy_mask = torch.zeros(g, g)
    copy_mask[0, 0], copy_mask[0, 1] = 1.0, 0.25
    paste_mask = torch.zeros(g, g)
    paste_mask[2, 2:4] = 1.0  # centre (2.5, 3): the 1x2 box is row 2, columns 2-3
    goal = copy_paste_goal(_obs(copy_vals), copy_mask, _obs(paste_vals), paste_mask)
    assert goal.box == (2, 3, 2, 4)
    assert goal.values[0, 0, 2, 2] == 3.0 and goal.values[0, 0, 2, 3] == 0.75 * 1.0 + 0.25 * 3.0
    assert (goal.values[0, 0, :2] == 1.0).all()


def test_context_keys_area_average_the_mask_onto_the_key_grid_in_row_order():
    keys = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(1, 2, 2, 2)  # (B, C, H, W)
    mask = torch.zeros(4, 4)
    mask[0, 2] = 1.0  # one pixel of the 2x2 block of cell (0, 1): weight 1/4
    mask[2:4, 2:4] = 1.0  # the whole block of cell (1, 1): weight 1
    rows, weights = context_keys([(_obs(torch.zeros(1, 1, 2, 2), keys), mask)])
    assert torch.equal(weights, torch.tensor([0.25, 1.0]))
    assert torch.equal(rows, torch.stack([keys[0, :, 0, 1], keys[0, :, 1, 1]]))


def test_erase_picks_the_channels_most_specific_to_the_context():
    keys = torch.zeros(1, 4, 2, 2)
    keys[0, 0] = 5.0  # strong everywhere, but also strong in the data (diag C large)
    keys[0, 2, 0, 0] = 2.0  # strong under the context, rare in the data
    keys[0, 3, 0, 0] = 1.0
    mask = torch.zeros(2, 2)
    mask[0, 0] = 1.0
    cov = torch.diag(torch.tensor([100.0, 1.0, 0.5, 0.5]))
    # specificity = mean k^2 under the mask / diag C: [0.25, 0, 8, 2]
    units = erase_units([(_obs(torch.zeros(1, 1, 2, 2), keys), mask)], cov, 2)
    assert units.tolist() == [2, 3]


def _conv(model: torch.nn.Module, keys: torch.Tensor) -> torch.Tensor:
    w, b = model.body[0].weight.detach()[:, :, 0, 0].double(), model.body[0].bias.detach().double()
    return torch.einsum("oc,bchw->bohw", w, keys.double()) + b[None, :, None, None]


def test_observe_records_the_keys_the_linear_output_and_the_value():
    from model_rewrite.goals import observe
    from model_rewrite.layers import LayerSpec

    model = KeysAreTheLatent(4, 3, (4, 5))
    z = torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    obs = observe(model, LayerSpec("body", "body.0", key_axis=1), z)
    assert torch.equal(obs.keys, z) and torch.equal(obs.args[0], z) and obs.kwargs == {}
    torch.testing.assert_close(obs.linear.double(), _conv(model, z), rtol=1e-6, atol=1e-6)
    assert torch.equal(obs.values, obs.linear)


def test_erase_zeroes_the_chosen_units_inside_the_paste_region_only_and_they_vanish_after_the_solve():
    from model_rewrite.config import UpdateConfig
    from model_rewrite.goals import erase_goal, observe
    from model_rewrite.layers import LayerSpec
    from model_rewrite.solve import solve_update

    model, spec = KeysAreTheLatent(4, 3, (4, 5)), LayerSpec("body", "body.0", key_axis=1)
    z = torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    obs = observe(model, spec, z)
    paste = torch.zeros(8, 10)  # the image is twice the key grid: pixel (y, x) lies in cell (y // 2, x // 2)
    paste[2, 3] = 1.0  # a quarter of cell (1, 1)
    paste[5:8, 4:6] = 1.0  # cells (2, 2) and (3, 2), fully or in part
    units = torch.tensor([0, 2])
    goal = erase_goal(model, spec, z, obs, paste, units)
    region = torch.zeros(4, 5, dtype=torch.bool)
    region[1, 1] = region[2, 2] = region[3, 2] = True
    erased = z.clone()
    erased[0, 0][region] = 0.0
    erased[0, 2][region] = 0.0
    torch.testing.assert_close(goal.linear.double(), _conv(model, erased), rtol=1e-6, atol=1e-6)
    assert torch.equal(goal.values, goal.linear)
    assert goal.box == (1, 4, 1, 3)  # the paste mask's bounding box on the value grid
    assert erase_goal(model, spec, z, obs, paste, units, tight=False).box == (0, 4, 0, 5)
    assert hook_count(model) == 0
    # a rectangular paste region, solved along the erased units' own axes: the units vanish in the box (the
    # edited layer writes the output without them there) and the other units still count
    square = torch.zeros(8, 10)
    square[2:6, 2:8] = 1.0  # cells rows 1-2, columns 1-3
    goal = erase_goal(model, spec, z, obs, square, units)
    assert goal.box == (1, 3, 1, 4)
    res = solve_update(model, spec, torch.eye(4)[units], goal, UpdateConfig(method="closed_form", preserve=0.0, ridge=0.0))
    w = model.body[0].weight.detach() + res.delta.dense()
    edited = torch.nn.functional.conv2d(z, w, model.body[0].bias.detach())
    gone = z.clone()
    gone[:, units] = 0.0
    torch.testing.assert_close(edited[..., 1:3, 1:4].double(), _conv(model, gone)[..., 1:3, 1:4], rtol=1e-4, atol=1e-4)
    assert (edited - _conv(model, z).float()).abs().max() > 0.1


def test_erase_units_weights_the_context_and_guards_zero_variances():
    keys = torch.zeros(1, 3, 1, 2)
    keys[0, :, 0, 0] = torch.tensor([1.0, 0.0, 3.0])
    keys[0, :, 0, 1] = torch.tensor([2.0, 1.0, 0.0])
    mask = torch.tensor([[1.0, 0.5]])
    # weighted mean square: ch0 (1 + 0.5 * 4) / 1.5 = 2, ch1 0.5 / 1.5 = 1/3, ch2 9 / 1.5 = 6; diag C = (1, 0, 4):
    # scores 2, (1/3) / 1e-12 (a zero variance is floored, not divided by), 1.5
    units = erase_units([(_obs(torch.zeros(1, 1, 1, 2), keys), mask)], torch.diag(torch.tensor([1.0, 0.0, 4.0])), 5)
    assert units.tolist() == [1, 0, 2]  # all three: the count is capped by the channels
    top = erase_units([(_obs(torch.zeros(1, 1, 1, 2), keys), mask)], torch.diag(torch.tensor([1.0, 1.0, 4.0])), 1)
    assert top.tolist() == [0]  # scores 2, 1/3, 1.5
    keys[0, 2, 0, 0] = -3.0  # squared: the sign does not matter
    top = erase_units([(_obs(torch.zeros(1, 1, 1, 2), keys), mask)], torch.eye(3), 1)
    assert top.tolist() == [2]  # scores 2, 1/3, 6


def test_context_keys_threshold_and_layers_without_a_key_grid():
    keys = torch.arange(8.0).reshape(1, 2, 2, 2)
    mask = torch.zeros(20, 20)
    mask[0, 0] = 0.1  # cell (0, 0) of 10x10 pixels: weight 0.001, not above the 1e-3 threshold
    mask[0, 10:12] = 1.0  # cell (0, 1): weight 0.02
    rows, weights = context_keys([(_obs(torch.zeros(1, 1, 2, 2), keys), mask)])
    assert rows.tolist() == [keys[0, :, 0, 1].tolist()] and weights.tolist() == [pytest.approx(0.02)]
    with pytest.raises(InvalidEdit, match="^the context masks cover no location of this layer's key grid; paint larger regions$"):
        context_keys([(_obs(torch.zeros(1, 1, 2, 2), keys), torch.full((20, 20), 1e-4))])
    # a Linear layer's keys (1, C) have no grid: the one key counts with weight 1
    flat = Observation((), {}, torch.tensor([[1.0, 2.0]]), torch.zeros(1, 3), torch.zeros(1, 3))
    rows, weights = context_keys([(flat, mask), (flat, mask)])
    assert rows.tolist() == [[1.0, 2.0], [1.0, 2.0]] and weights.tolist() == [1.0, 1.0]


def test_weights_exactly_at_the_threshold_do_not_count():
    from model_rewrite.goals import erase_goal, observe
    from model_rewrite.layers import LayerSpec

    at = torch.tensor(1e-3, dtype=torch.float32)  # the threshold as float32: not above it
    keys = torch.arange(8.0).reshape(1, 2, 2, 2)
    mask = torch.zeros(2, 2)
    mask[0, 0], mask[1, 1] = at, 1.0
    rows, weights = context_keys([(_obs(torch.zeros(1, 1, 2, 2), keys), mask)])
    assert rows.tolist() == [keys[0, :, 1, 1].tolist()]
    model, spec = KeysAreTheLatent(4, 3, (4, 5)), LayerSpec("body", "body.0", key_axis=1)
    z = torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    paste = torch.zeros(4, 5)  # the key and value grids are the image's: no resizing
    paste[0, 0], paste[2, 2] = at, 1.0
    goal = erase_goal(model, spec, z, observe(model, spec, z), paste, torch.tensor([1]))
    assert goal.box == (2, 3, 2, 3)
    erased = z.clone()
    erased[0, 1, 2, 2] = 0.0
    torch.testing.assert_close(goal.linear.double(), _conv(model, erased), rtol=1e-6, atol=1e-6)


def test_observe_stops_after_the_block():
    from model_rewrite.goals import observe
    from model_rewrite.layers import LayerSpec

    class Raises(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("the network must stop after the observed block")

    model = KeysAreTheLatent(4, 3, (4, 5))
    model.body.append(Raises())
    model.body = torch.nn.Sequential(torch.nn.Sequential(model.body[0]), model.body[1])
    obs = observe(model, LayerSpec("body.0", "body.0.0", key_axis=1), torch.randn(1, 4, 4, 5))
    assert obs.values.shape == (1, 3, 4, 5)
