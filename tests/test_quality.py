"""The quality report (quality.py) on cases whose answers are known without the code under test: a zero
change scores nothing, an exact edit on a model whose edited layer draws the image reproduces the preview,
and transfer on the paste image itself equals paste fidelity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from helpers import box_mask

from model_rewrite import KeyConfig, Rewriter, Selection, StatsConfig, UpdateConfig
from model_rewrite.errors import InvalidEdit
from model_rewrite.config import RenderConfig
from model_rewrite.quality import (GOAL_VERDICTS, SOLVE_VERDICTS, COLLATERAL_VERDICTS, FIDELITY_VERDICTS, LOCALITY_VERDICTS, TRANSFER_VERDICTS, fidelity,
                                   EDGE_WARN_SHARE, QualityReport, edge_share,
                                   quality_report, verdict)
from model_rewrite.update import LowRankDelta


class LinearTail(nn.Module):
    """z (32,) -> a key map (24, 8, 8) by a fixed linear map -> a 1x1 convolution to the (3, 8, 8) image.

    The edited layer (`draw`) writes the image itself, so the pixel preview is the layer's goal."""

    resolution = 8
    latent_shape = (32,)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.keys = nn.Linear(32, 24 * 64, bias=False)
        self.draw = nn.Conv2d(24, 3, 1)
        with torch.no_grad():
            self.keys.weight.copy_(torch.randn(24 * 64, 32, generator=g) / 32**0.5)
            self.draw.weight.copy_(torch.randn(3, 24, 1, 1, generator=g) * 0.3)
            self.draw.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.draw(self.keys(z.reshape(-1, 32)).reshape(-1, 24, 8, 8))


def test_fidelity_by_hand():
    original, preview = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    half = torch.full((3, 4, 4), 0.5)
    assert fidelity(original, original, preview, (0, 4, 0, 4)) == 0.0
    assert fidelity(preview, original, preview, (0, 4, 0, 4)) == 1.0
    assert fidelity(half, original, preview, (0, 2, 0, 2)) == pytest.approx(0.5)
    assert fidelity(-half, original, preview, (0, 4, 0, 4)) == pytest.approx(-0.5)  # further away than before


def test_verdicts_follow_the_documented_thresholds():
    assert verdict(0.5, FIDELITY_VERDICTS) == FIDELITY_VERDICTS[0][1]
    assert verdict(0.49, FIDELITY_VERDICTS) == FIDELITY_VERDICTS[1][1]
    assert verdict(-3.0, FIDELITY_VERDICTS) == FIDELITY_VERDICTS[2][1]
    assert verdict(0.02, COLLATERAL_VERDICTS, higher_is_better=False) == COLLATERAL_VERDICTS[0][1]
    assert verdict(0.5, COLLATERAL_VERDICTS, higher_is_better=False) == COLLATERAL_VERDICTS[2][1]
    assert verdict(None, FIDELITY_VERDICTS).startswith("not measured")


def test_an_exact_edit_on_a_layer_that_draws_the_image_reproduces_the_preview(tmp_path):
    rw = Rewriter(LinearTail(), cache_dir=tmp_path / "c")
    copy, paste = box_mask(8, 1, 3, 1, 3), box_mask(8, 5, 7, 4, 6)
    # rank 4 over the paste box's 4 keys and no ridge or preserve: the closed form fits the box exactly
    edit = rw.new_edit("draw", paste=Selection(2, paste), copy=Selection(1, copy), context=[Selection(2, paste)],
                       keys=KeyConfig(rank=4, eig_floor=0.0), stats=StatsConfig(num_samples=200),
                       update=UpdateConfig(method="closed_form", ridge=0.0, preserve=0.0))
    entry = rw.apply(edit)
    q = quality_report(rw, entry.id, [2], RenderConfig(fire_quantile=0.9))
    assert q.paste_fidelity == pytest.approx(1.0, abs=1e-4)
    # held-out = the paste image alone: it fires at its own peak, the offset is zero, so transfer = fidelity
    assert q.fires_on == 1 and q.transfer == pytest.approx(q.paste_fidelity, abs=1e-6)
    assert q.verdicts["paste_fidelity"] == FIDELITY_VERDICTS[0][1]
    # the same with the heat of the second direction: the paste image's peak is read from that direction too
    q1 = quality_report(rw, entry.id, [2], RenderConfig(fire_quantile=0.9, heat_direction=1))
    assert q1.transfer == pytest.approx(q1.paste_fidelity, abs=1e-6)


def test_a_zero_change_scores_no_fidelity_no_transfer_and_no_change(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    edit = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, box_mask(32, 2, 14, 2, 14)),
                       context=[Selection(3, m)], stats=StatsConfig(num_samples=50))
    spec = rw.spec("b16")
    dirs = rw.edit_directions(edit)
    zero = LowRankDelta(spec.param_path, spec.key_axis, torch.zeros(1, *rw.model.b16.conv.weight.shape[1:]), dirs)
    entry = rw.apply(edit, zero)
    q = quality_report(rw, entry.id, range(40, 48))
    assert q.paste_fidelity == 0.0 and q.transfer == 0.0 and q.fires_on >= 1
    assert q.change.inside_change == 0.0 and q.change.outside_change == 0.0 and q.collateral == 0.0
    d = q.to_dict()
    assert d["heldout"] == 8 and d["inside_change"] == 0.0 and set(d["verdicts"]) == {
        "paste_fidelity", "transfer", "locality", "collateral", "goal_fidelity", "solve_fidelity"}
    assert q.solve_fidelity == 0.0  # the unchanged image is no closer to the rendered goal than itself
    assert len(q.lines()) == 6
    # directions that read nothing: the heat is zero everywhere, the rule fires nowhere, there is no transfer
    none = rw.apply(edit, LowRankDelta(spec.param_path, spec.key_axis, zero.factor, torch.zeros_like(dirs)))
    q = quality_report(rw, none.id, range(40, 44))
    assert q.fires_on == 0 and q.transfer is None and q.verdicts["transfer"].startswith("not measured")


def test_erase_edits_have_no_preview_to_compare(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    edit = rw.new_edit("b16", paste=Selection(3, m), context=[Selection(3, m)], stats=StatsConfig(num_samples=50),
                       update=UpdateConfig(erase=True, erase_units=3, steps=5))
    entry = rw.apply(edit)
    q = quality_report(rw, entry.id, range(40, 44))
    assert q.paste_fidelity is None and q.transfer is None and q.verdicts["transfer"].startswith("not measured")
    assert q.lines()[0] == f"paste fidelity n/a: {verdict(None, FIDELITY_VERDICTS)}"
    assert q.lines()[1].startswith(f"transfer n/a (fires on {q.fires_on} of 4 held-out images): ")
    # an erase edit that also names a copy selection has no preview either
    both = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m)],
                       stats=StatsConfig(num_samples=50), update=UpdateConfig(erase=True, erase_units=3, steps=5))
    q = quality_report(rw, rw.apply(both).id, range(40, 44))
    assert q.paste_fidelity is None and q.transfer is None
    with pytest.raises(InvalidEdit, match="^no active edit has id 99$"):
        quality_report(rw, 99, [1])


def test_peak_fidelity_and_verdict_edges_by_hand():
    from model_rewrite.quality import LOCALITY_VERDICTS, TRANSFER_VERDICTS, _peak

    heat = torch.zeros(2, 4)
    heat[1, 3] = 5.0  # cell (1, 3) of a 2x4 grid on 8 px: centre (1.5 * 4, 3.5 * 2)
    assert _peak(heat, 8) == (6.0, 7.0)
    same = torch.zeros(3, 2, 2)
    assert fidelity(same, same, same, (0, 2, 0, 2)) == 1.0  # nothing to draw and nothing drawn
    assert fidelity(same + 1, same, same, (0, 2, 0, 2)) == 0.0  # nothing to draw, but changed
    assert verdict(0.05, COLLATERAL_VERDICTS, higher_is_better=False) == COLLATERAL_VERDICTS[1][1]
    assert verdict(0.0501, COLLATERAL_VERDICTS, higher_is_better=False) == COLLATERAL_VERDICTS[2][1]
    assert verdict(0.1, TRANSFER_VERDICTS) == TRANSFER_VERDICTS[1][1] and verdict(0.09, TRANSFER_VERDICTS) == TRANSFER_VERDICTS[2][1]
    assert verdict(3.0, LOCALITY_VERDICTS) == LOCALITY_VERDICTS[0][1] and verdict(1.5, LOCALITY_VERDICTS) == LOCALITY_VERDICTS[1][1]
    with pytest.raises(AssertionError, match="^a verdict table ends with a fallback$"):
        verdict(0.0, ((1.0, "only"),))


def test_collateral_fires_on_and_the_lines_follow_their_definitions(tmp_path):
    from model_rewrite.report import measure_edit

    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    edit = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, box_mask(32, 2, 14, 2, 14)),
                       context=[Selection(3, m)], stats=StatsConfig(num_samples=50), update=UpdateConfig(steps=5), name="q")
    entry = rw.apply(edit)
    seeds, cfg = list(range(40, 49)), RenderConfig(fire_quantile=0.9)
    q = quality_report(rw, entry.id, seeds, cfg)
    meas = measure_edit(rw, entry.id, seeds, cfg)
    peaks = meas.heats.flatten(1).amax(1)
    change = (meas.after - meas.before).abs().mean((1, 2, 3))
    quiet = sorted(range(9), key=lambda i: float(peaks[i]))[:2]  # a quarter of 9 images, rounded down
    assert q.collateral == pytest.approx(float(change[quiet].mean()), rel=1e-6)
    # transfer by its documented rule: on each image that fires, the copied patch lands at the image's heat peak
    # plus the paste box's offset from the paste image's own peak; the mean fidelity there
    from model_rewrite.masks import box_center, copy_placement, paste_box, paste_patch

    def peak(heat):
        i = int(torch.argmax(heat))
        return (i // 8 + 0.5) * 4, (i % 8 + 0.5) * 4  # an 8x8 key grid on 32 px

    copy_img, paste_img = rw.sample_original([1])[0], rw.sample_original([3])[0]
    copy_box, box = copy_placement(edit.copy.mask, edit.paste.mask)
    py, px = peak(rw.heat("b16", entry.delta.dirs, [3])[0])
    cy, cx = box_center(box)
    scores = []
    for i in torch.nonzero(peaks > meas.report.change.threshold).flatten().tolist():
        y, x = peak(meas.heats[i])
        placed = paste_box((y + cy - py, x + cx - px), box[1] - box[0], box[3] - box[2], (32, 32))
        target = paste_patch(meas.before[i], copy_img, edit.copy.mask, copy_box, placed)
        scores.append(fidelity(meas.after[i], meas.before[i], target, placed))
    assert len(scores) >= 2 and q.transfer == pytest.approx(sum(scores) / len(scores), rel=1e-6)
    preview = paste_patch(paste_img, copy_img, edit.copy.mask, copy_box, box)
    assert q.paste_fidelity == pytest.approx(fidelity(rw.sample([3])[0], paste_img, preview, box), rel=1e-6)
    q5 = quality_report(rw, entry.id, seeds[:5], cfg)  # a quarter of 5 images is 1
    m5 = measure_edit(rw, entry.id, seeds[:5], cfg)
    quietest = int(torch.argmin(m5.heats.flatten(1).amax(1)))
    assert q5.collateral == pytest.approx(float((m5.after - m5.before)[quietest].abs().mean()), rel=1e-6)
    assert q.fires_on == int((peaks > meas.report.change.threshold).sum()) and q.heldout == 9
    assert q.change == meas.report.change and q.seeds == tuple(seeds) and (q.name, q.layer) == ("q", "b16")
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    assert q.lines() == [
        f"paste fidelity {fmt(q.paste_fidelity)}: {q.verdicts['paste_fidelity']}",
        f"transfer {fmt(q.transfer)} (fires on {q.fires_on} of 9 held-out images): {q.verdicts['transfer']}",
        f"locality {q.change.ratio:.1f}x (inside {q.change.inside_change:.3f}, outside {q.change.outside_change:.3f}): "
        f"{q.verdicts['locality']}",
        f"collateral {q.collateral:.3f}: {q.verdicts['collateral']}",
        f"goal fidelity {fmt(q.goal_fidelity)}: {q.verdicts['goal_fidelity']}",
        f"solve fidelity {fmt(q.solve_fidelity)}: {q.verdicts['solve_fidelity']}"]
    assert q.verdicts == {"paste_fidelity": verdict(q.paste_fidelity, FIDELITY_VERDICTS),
                          "transfer": verdict(q.transfer, TRANSFER_VERDICTS),
                          "locality": verdict(q.change.ratio, LOCALITY_VERDICTS),
                          "collateral": verdict(q.collateral, COLLATERAL_VERDICTS, higher_is_better=False),
                          "goal_fidelity": verdict(q.goal_fidelity, GOAL_VERDICTS),
                          "solve_fidelity": verdict(q.solve_fidelity, SOLVE_VERDICTS)}
    d = q.to_dict()
    assert d["heldout_seeds"] == seeds and d["lines"] == q.lines() and d["ratio"] == q.change.ratio
    assert "change" not in d and "seeds" not in d and d["collateral"] == q.collateral
    # images passed in as originals are used instead of rendering them again
    fake = {s: torch.zeros(3, 32, 32) for s in seeds + [1, 3]}
    q2 = quality_report(rw, entry.id, seeds, cfg, originals=fake)
    assert q2.change.inside_change == pytest.approx(float((meas.after.abs().mean(1))[meas.regions].mean()), rel=1e-5)


def test_an_image_whose_peak_equals_the_threshold_does_not_fire(tmp_path):
    """The threshold is placed exactly on the quieter image's peak (a quantile at an integer index is a value of
    the data): that image does not count as firing."""
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 8, 20, 8, 20)
    edit = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m)],
                       stats=StatsConfig(num_samples=50), update=UpdateConfig(steps=2))
    entry = rw.apply(edit)
    heats = rw.heat("b16", entry.delta.dirs, [40, 41])
    peaks = heats.flatten(1).amax(1)
    low = float(peaks.min())
    values = torch.sort(heats.flatten().double()).values
    rank = int(torch.nonzero(values == low)[0])
    q = rank / (values.numel() - 1)
    assert float(torch.quantile(values, q)) == low, "the test's precondition: the threshold is that peak exactly"
    report = quality_report(rw, entry.id, [40, 41], RenderConfig(fire_quantile=q))
    assert report.fires_on == 1


def test_edge_share_by_hand():
    fire = torch.zeros(2, 4, 5, dtype=torch.bool)
    assert edge_share(fire) == ("", 0.0)
    fire[0, 0, 1:4] = True  # three cells on the top row of image 0
    fire[1, 2, 2] = True  # one inside
    assert edge_share(fire) == ("top", 0.75)
    fire[1, 1:3, 4] = True  # two on the right column: 6 cells in all, top 3, right 2
    assert edge_share(fire) == ("top", 0.5)
    fire[0, 3, 4] = True  # the bottom-right corner counts for bottom and right: right 3 of 7, ties go to top
    assert edge_share(fire) == ("top", 3 / 7)
    fire[0, 0, 1:4] = False  # top 0; right 3 of 4 (the corner included), bottom 1
    assert edge_share(fire) == ("right", 0.75)


def test_an_edge_warning_line_only_at_the_documented_share():
    from model_rewrite.report import ChangeReport

    change = ChangeReport(inside_change=0.2, outside_change=0.05, ratio=4.0, fire_fraction=0.02, threshold=1.0, quantile=0.98)
    verdicts = {k: "v" for k in ("paste_fidelity", "transfer", "locality", "collateral", "goal_fidelity", "solve_fidelity")}

    def report(side: str, share: float) -> QualityReport:
        return QualityReport("e", "b16", (1, 2), 1, 0.5, 0.1, change, 0.01, 0.5, 0.5, verdicts, side, share)

    assert EDGE_WARN_SHARE == 0.25
    assert report("top", 0.249).lines() == report("", 0.0).lines() and len(report("", 0.0).lines()) == 6
    lines = report("top", 0.25).lines()
    assert len(lines) == 7 and lines[-1].startswith("edge: 25% of where the rule fires lies along the images' top edge")
    d = report("left", 0.5).to_dict()
    assert d["edge_side"] == "left" and d["edge_share"] == 0.5 and "images' left edge" in d["lines"][-1]
