"""The library's edit report (report.py): measured on the right images, with figures recomputed by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import box_mask

from model_rewrite import KeyConfig, RenderConfig, Rewriter, Selection, UpdateConfig
from model_rewrite.errors import InvalidEdit
from model_rewrite.report import measure_edit


@pytest.fixture
def rw(tmp_path):
    return Rewriter("tiny", cache_dir=tmp_path / "cache")


def _edit(rw, seed, name, rank=1):
    m = box_mask(32, 10, 20, 10, 20)
    return rw.new_edit("b16", paste=Selection(seed, m), copy=Selection(seed + 1, m), context=[Selection(seed, m)],
                       update=UpdateConfig(steps=5), keys=KeyConfig(rank=rank), name=name)


def test_an_edit_in_the_middle_of_the_stack_is_measured_against_the_others_alone(rw):
    first = rw.apply(_edit(rw, 1, "first"))
    second = rw.apply(_edit(rw, 5, "second", rank=2))
    seeds = [40, 41, 42, 43]
    m = measure_edit(rw, first.id, seeds, RenderConfig(fire_quantile=0.9, heat_direction=0))
    after = rw.sample(seeds)
    rw.stack.revert_all()
    rw.stack.push(second.delta, "second alone")
    only_second = rw.sample(seeds)
    assert torch.equal(m.before, only_second) and torch.equal(m.after, after)
    # the figures, recomputed from the images and regions by hand
    change = (after - only_second).abs().mean(1)
    inside, outside = change[m.regions].mean(), change[~m.regions].mean()
    r = m.report.change
    assert r.inside_change == pytest.approx(float(inside), rel=1e-6)
    assert r.outside_change == pytest.approx(float(outside), rel=1e-6)
    assert r.ratio == pytest.approx(float(inside / outside), rel=1e-6)
    assert r.fire_fraction == pytest.approx(float(m.regions.float().mean()))
    assert 0.05 < r.fire_fraction < 0.2  # a 0.9 quantile over the heat marks about a tenth of the pixels
    d = m.report.to_dict()
    assert d["name"] == "first" and d["layer"] == "b16" and d["heldout_seeds"] == seeds


def test_measure_refuses_what_it_cannot_measure(rw):
    entry = rw.apply(_edit(rw, 1, "one"))
    with pytest.raises(InvalidEdit, match="^no active edit has id 2$"):
        measure_edit(rw, entry.id + 1, [1])
    with pytest.raises(InvalidEdit, match=r"^heat_direction 1 is out of range: edit 'one' has 1 direction\(s\), numbered from 0$"):
        measure_edit(rw, entry.id, [1], RenderConfig(heat_direction=1))
    with pytest.raises(InvalidEdit, match="^measure an edit on at least one image$"):
        measure_edit(rw, entry.id, [])


def test_change_report_and_fire_regions_by_hand():
    from model_rewrite.report import change_report, fire_regions

    before = torch.zeros(1, 3, 2, 2)
    after = before.clone()
    after[0, :, 0, 0] = torch.tensor([0.3, 0.6, 0.9])  # mean over colours 0.6 inside
    after[0, 0, 1, 1] = 0.3  # mean over colours 0.1 outside, where two of three pixels do not change
    regions = torch.tensor([[[True, False], [False, False]]])
    r = change_report(before, after, regions, 0.5, 0.9)
    assert r.inside_change == pytest.approx(0.6) and r.outside_change == pytest.approx(0.1 / 3)
    assert r.ratio == pytest.approx(18.0) and (r.fire_fraction, r.threshold, r.quantile) == (0.25, 0.5, 0.9)
    assert r.to_dict() == {"inside_change": r.inside_change, "outside_change": r.outside_change, "ratio": r.ratio,
                           "fire_fraction": 0.25, "threshold": 0.5, "quantile": 0.9}
    none = change_report(before, after, torch.zeros(1, 2, 2, dtype=torch.bool), 0.0, 0.5)
    assert none.inside_change == 0.0 and none.fire_fraction == 0.0 and none.outside_change == pytest.approx(0.7 / 4)
    every = change_report(before, after, torch.ones(1, 2, 2, dtype=torch.bool), 0.0, 0.5)
    assert every.outside_change == 0.0 and every.ratio == pytest.approx(every.inside_change / 1e-12)
    # heats on a 2x2 key grid, 4 px images: each cell covers a 2x2 block; the 0.5 quantile of 1..8 is 4.5
    heats = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    reg, th = fire_regions(heats, 4, 0.5)
    assert th == pytest.approx(4.5) and reg.shape == (2, 4, 4)
    assert not reg[0].any() and bool(reg[1].all())
    reg, th = fire_regions(heats, 4, 0.75)  # 6.25: cells 7 and 8, the bottom row of the second image
    assert th == pytest.approx(6.25) and reg[1, 2:].all() and not reg[1, :2].any()


def test_measure_reads_the_layer_of_an_edit_without_a_spec(rw):
    entry = rw.apply(_edit(rw, 1, "one"))
    bare = rw.stack.push(entry.delta, "bare")  # the same change again, pushed without its EditSpec
    m = measure_edit(rw, bare.id, [40, 41], RenderConfig(heat_direction=0))
    assert m.report.layer == "b16" and m.report.name == "bare" and m.report.seeds == (40, 41)
    assert m.heats.shape == (2, 8, 8) and m.regions.shape == (2, 32, 32)
    given = torch.zeros(2, 3, 32, 32)
    assert torch.equal(measure_edit(rw, bare.id, [40, 41], before=given).before, given)


def test_heat_exactly_at_the_threshold_does_not_fire():
    from model_rewrite.report import fire_regions

    heats = torch.arange(1.0, 6.0).reshape(1, 1, 5)  # the 0.5 quantile of 1..5 is 3, a value of the data
    reg, th = fire_regions(heats, 5, 0.5)
    assert th == 3.0 and reg[0, 0].tolist() == [False, False, False, True, True]


def test_measure_uses_the_configured_direction_and_reports_its_threshold(rw):
    import numpy as np

    entry = rw.apply(_edit(rw, 1, "two", rank=2))
    seeds = [40, 41, 42]
    m = measure_edit(rw, entry.id, seeds, RenderConfig(fire_quantile=0.8, heat_direction=1))
    want = rw.heat("b16", entry.delta.dirs, seeds, 1)
    assert torch.equal(m.heats, want) and not torch.equal(want, rw.heat("b16", entry.delta.dirs, seeds, 0))
    assert m.report.change.threshold == pytest.approx(float(np.quantile(want.double().numpy(), 0.8)))
    assert m.report.change.quantile == 0.8


def test_an_edit_of_a_weight_no_editable_layer_owns_cannot_be_measured(rw):
    from model_rewrite.update import LowRankDelta

    bare = rw.stack.push(LowRankDelta("b16.norm.weight", 0, torch.zeros(1), torch.zeros(1, 8)), "odd")
    with pytest.raises(InvalidEdit, match="^no editable layer owns b16.norm.weight$"):
        measure_edit(rw, bare.id, [1])
