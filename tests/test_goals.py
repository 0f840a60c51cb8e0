"""What the selections mean at a layer (goals.py): keys under soft context masks, the copy-paste goal and the
erase choice, on hand-built observations whose right answers are written out by hand."""

from __future__ import annotations

import torch

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
