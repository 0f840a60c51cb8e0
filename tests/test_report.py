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
    with pytest.raises(InvalidEdit, match="no active edit"):
        measure_edit(rw, entry.id + 1, [1])
    with pytest.raises(InvalidEdit, match="heat_direction 1 is out of range"):
        measure_edit(rw, entry.id, [1], RenderConfig(heat_direction=1))
    with pytest.raises(InvalidEdit, match="at least one image"):
        measure_edit(rw, entry.id, [])
