"""The goal as the model will draw it (Rewriter.render_goal) and the two gaps of the quality report:
goal fidelity (a: can this layer draw what was painted?) and solve fidelity (b: did the solve reach it?)."""

from __future__ import annotations

import pytest
import torch
from helpers import box_mask
from test_quality import LinearTail

from model_rewrite import KeyConfig, Rewriter, Selection, StatsConfig, UpdateConfig
from model_rewrite.config import RenderConfig
from model_rewrite.masks import copy_placement, paste_patch
from model_rewrite.quality import GOAL_VERDICTS, SOLVE_VERDICTS, quality_report


def test_with_an_identity_tail_the_rendered_goal_is_the_painted_composite(tmp_path):
    rw = Rewriter(LinearTail(), cache_dir=tmp_path / "c")
    copy, paste = box_mask(8, 1, 3, 1, 4), box_mask(8, 5, 7, 3, 6)
    edit = rw.new_edit("draw", paste=Selection(2, paste), copy=Selection(1, copy), context=[Selection(2, paste)],
                       stats=StatsConfig(num_samples=50))
    images = rw.sample([1, 2])
    copy_box, box = copy_placement(copy, paste)
    painted = paste_patch(images[1], images[0], copy, copy_box, box)  # the pixel composite, computed apart
    torch.testing.assert_close(rw.render_goal(edit), painted)


def test_an_exact_edit_reaches_the_goal_and_the_goal_is_the_painting(tmp_path):
    rw = Rewriter(LinearTail(), cache_dir=tmp_path / "c")
    copy, paste = box_mask(8, 1, 3, 1, 3), box_mask(8, 5, 7, 4, 6)
    edit = rw.new_edit("draw", paste=Selection(2, paste), copy=Selection(1, copy), context=[Selection(2, paste)],
                       keys=KeyConfig(rank=4, eig_floor=0.0), stats=StatsConfig(num_samples=200),
                       update=UpdateConfig(method="closed_form", ridge=0.0, preserve=0.0))
    q = quality_report(rw, rw.apply(edit).id, [2], RenderConfig(fire_quantile=0.9))
    assert q.goal_fidelity == pytest.approx(1.0, abs=1e-5) and q.solve_fidelity == pytest.approx(1.0, abs=1e-4)
    assert q.verdicts["goal_fidelity"] == GOAL_VERDICTS[0][1] and q.verdicts["solve_fidelity"] == SOLVE_VERDICTS[0][1]
    # a rank-1 closed form cannot fit four pixels' worth of values: the layer could, the solve did not
    weak = rw.new_edit("draw", paste=Selection(2, paste), copy=Selection(1, copy), context=[Selection(2, paste)],
                       keys=KeyConfig(rank=1), stats=StatsConfig(num_samples=200),
                       update=UpdateConfig(method="closed_form", preserve=0.0))
    rw.stack.revert_all()
    q1 = quality_report(rw, rw.apply(weak).id, [2], RenderConfig(fire_quantile=0.9))
    assert q1.goal_fidelity == pytest.approx(1.0, abs=1e-5) and q1.solve_fidelity < 0.9


def test_the_rendered_goal_depends_on_the_layer_and_an_unchanged_goal_renders_the_image(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m, c = box_mask(32, 16, 28, 16, 28), box_mask(32, 2, 14, 2, 14)
    at = lambda layer: rw.new_edit(layer, paste=Selection(3, m), copy=Selection(1, c))  # noqa: E731
    assert not torch.allclose(rw.render_goal(at("b8")), rw.render_goal(at("b16")), atol=1e-3)
    same = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(3, m))  # copy a region onto itself
    torch.testing.assert_close(rw.render_goal(same), rw.sample([3])[0])


def test_stylegan2_goals_render_with_the_paste_images_styles_and_noise_at_an_upsampling_layer(tmp_path):
    from stylegan2_reference import rosinality_state_dict

    from model_rewrite.models.formats.rosinality import stylegan2_from_rosinality

    sd, latent_avg = rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=0)
    model = stylegan2_from_rosinality({"g_ema": sd, "latent_avg": latent_avg}, "fixture")
    rw = Rewriter(model, cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    for layer in ("b16.conv0", "b32.conv1"):  # an upsampling conv (values on twice the key grid) and a plain one
        same = rw.new_edit(layer, paste=Selection(5, m), copy=Selection(5, m))
        torch.testing.assert_close(rw.render_goal(same), rw.sample([5])[0], rtol=1e-5, atol=1e-5)
        other = rw.new_edit(layer, paste=Selection(5, m), copy=Selection(6, box_mask(32, 2, 14, 2, 14)))
        diff = (rw.render_goal(other) - rw.sample([5])[0]).abs().mean(0)
        assert diff[m.bool()].mean() > 3 * diff[~m.bool()].mean()  # the pasted features show where they were put


def test_layers_are_ranked_by_goal_fidelity_before_solving(tmp_path):
    from model_rewrite.suggest import rank_layers_by_goal

    rw = Rewriter(LinearTail(), cache_dir=tmp_path / "c")
    copy, paste = box_mask(8, 1, 3, 1, 4), box_mask(8, 5, 7, 3, 6)
    edit = rw.new_edit("draw", paste=Selection(2, paste), copy=Selection(1, copy))
    # the only layer whose key grid is large enough draws the image itself: it can draw all of the painting
    assert rank_layers_by_goal(rw, edit) == [("draw", pytest.approx(1.0, abs=1e-6))]
    tiny = Rewriter("tiny", cache_dir=tmp_path / "t")
    m, c = box_mask(32, 16, 28, 16, 28), box_mask(32, 2, 14, 2, 14)
    ranked = rank_layers_by_goal(tiny, tiny.new_edit("b16", paste=Selection(3, m), copy=Selection(1, c)))
    assert sorted(l for l, _ in ranked) == ["b16", "b32", "b8"] and all(0 <= v <= 1 for _, v in ranked)
    assert [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
