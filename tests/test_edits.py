import json

import pytest
import torch

from model_rewrite import EditSpec, KeyConfig, Rewriter, Selection, UpdateConfig, load_edit, save_edit
from model_rewrite.paper_format import edit_from_paper_request
from model_rewrite.errors import IncompatibleEdit, InvalidEdit, ModelLoadError
from model_rewrite.masks import data_url_from_mask
from model_rewrite.update import LowRankDelta
from helpers import box_mask


@pytest.fixture
def rw(tmp_path):
    return Rewriter("tiny", cache_dir=tmp_path / "cache")


def _edit(rw, layer="b16", rank=1, **upd):
    m = box_mask(32, 10, 20, 10, 20)
    return rw.new_edit(layer, paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m), Selection(4, box_mask(32, 8, 16, 8, 16))],
                       update=UpdateConfig(steps=10, **upd), keys=KeyConfig(rank=rank), name="test")


def test_edit_file_round_trip(rw, tmp_path):
    spec = _edit(rw)
    result = rw.solve(spec)
    path = save_edit(tmp_path / "e.json", spec, result.delta)
    spec2, delta2 = load_edit(path)
    assert spec2.to_dict() == spec.to_dict()
    assert torch.equal(delta2.factor, result.delta.factor) and torch.equal(delta2.dirs, result.delta.dirs)
    for a, b in zip(spec.context, spec2.context):
        assert a.seed == b.seed and torch.allclose(a.mask, b.mask, atol=1 / 255)
    # a saved edit re-applied without solving gives the same images
    rw.apply(spec2, delta2)
    imgs = rw.sample([7, 8])
    rw.stack.revert_all()
    rw.apply(spec)
    assert torch.equal(imgs, rw.sample([7, 8]))


def test_undo_is_bit_exact_and_stacking_is_exact(rw):
    w0 = rw.model.b16.conv.weight.clone()
    imgs0 = rw.sample([5, 6])
    d1 = rw.solve(_edit(rw)).delta
    d2 = rw.solve(_edit(rw, rank=2)).delta
    e1 = rw.stack.push(d1, "one")
    rw.stack.push(d2, "two")
    assert not torch.equal(rw.model.b16.conv.weight, w0)
    rw.stack.remove(e1.id)
    only_second = rw.model.b16.conv.weight.clone()
    rw.stack.revert_all()
    assert torch.equal(rw.model.b16.conv.weight, w0) and torch.equal(rw.sample([5, 6]), imgs0)
    rw.stack.push(d2, "two again")
    assert torch.equal(rw.model.b16.conv.weight, only_second)
    rw.stack.undo()
    assert torch.equal(rw.model.b16.conv.weight, w0)
    rw.stack.redo()
    assert torch.equal(rw.model.b16.conv.weight, only_second)


def test_edit_on_another_model_or_layer_is_refused(rw, tmp_path):
    spec = _edit(rw)
    other = EditSpec(**{**spec.__dict__, "fingerprint": "0000000000000000"})
    with pytest.raises(IncompatibleEdit, match="fingerprint"):
        rw.apply(other)
    bad_layer = EditSpec(**{**spec.__dict__, "layer": "b99"})
    with pytest.raises(IncompatibleEdit, match="b99"):
        rw.apply(bad_layer)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda d: d.update(extra=1), InvalidEdit, "unknown key"),
        (lambda d: d["update"].update(stepz=3), InvalidEdit, "unknown UpdateConfig"),
        (lambda d: d["update"].update(steps="many"), InvalidEdit, "steps must be int"),
        (lambda d: d["update"].update(method="magic"), InvalidEdit, "method must be one of"),
        (lambda d: d.update(version=99), IncompatibleEdit, "version"),
        (lambda d: d["paste"].update(mask="not a url"), InvalidEdit, "PNG data URL"),
        (lambda d: d["paste"].update(mask="data:image/png;base64,AAAA"), InvalidEdit, "not a readable image"),
        (lambda d: d["paste"].update(seed=-1), InvalidEdit, "non-negative"),
        (lambda d: (d.pop("paste"), d.update(context=[])), InvalidEdit, "paste"),  # with a context: a search request
    ],
)
def test_malformed_edit_files_give_clear_errors(rw, tmp_path, mutate, error, match):
    data = _edit(rw).to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=match):
        load_edit(path)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(InvalidEdit, match="not valid JSON"):
        load_edit(tmp_path / "x.json")
    with pytest.raises(InvalidEdit, match="does not exist"):
        load_edit(tmp_path / "missing.json")


def test_empty_and_wrong_size_masks_are_refused(rw):
    spec = _edit(rw)
    empty = EditSpec(**{**spec.__dict__, "paste": Selection(3, torch.zeros(32, 32))})
    with pytest.raises(InvalidEdit, match="empty"):
        rw.solve(empty)
    wrong = EditSpec(**{**spec.__dict__, "paste": Selection(3, torch.ones(64, 64))})
    with pytest.raises(InvalidEdit, match="32x32"):
        rw.solve(wrong)


def test_nan_result_is_refused_and_nothing_saved_is_overwritten(rw, tmp_path):
    spec = _edit(rw)
    delta = rw.solve(spec).delta
    path = save_edit(tmp_path / "keep.json", spec, delta)
    before_json, before_st = path.read_bytes(), path.with_suffix(".safetensors").read_bytes()
    bad = LowRankDelta(delta.param_path, delta.key_axis, delta.factor * float("nan"), delta.dirs)
    with pytest.raises(InvalidEdit, match="NaN"):
        save_edit(path, spec, bad)
    with pytest.raises(InvalidEdit, match="NaN"):
        rw.stack.push(bad)
    assert path.read_bytes() == before_json and path.with_suffix(".safetensors").read_bytes() == before_st
    assert not list(tmp_path.glob("*.tmp"))


def test_paper_request_format_is_accepted_with_model_and_layer(rw):
    m = data_url_from_mask(box_mask(32, 10, 20, 10, 20))
    req = {"key": [[3, m], [4, m]], "object": [1, m], "paste": [3, m]}  # the authors' format: one pair each, keys a list
    spec = edit_from_paper_request(req, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer="b16")
    assert [s.seed for s in spec.context] == [3, 4] and spec.copy.seed == 1 and not spec.update.erase
    erase = edit_from_paper_request({"key": [[3, m]], "paste": [3, m]}, model="tiny", fingerprint=rw.info.fingerprint, layer="b16")
    assert erase.update.erase and erase.copy is None
    with pytest.raises(InvalidEdit, match="unknown field"):
        edit_from_paper_request({"paste": [3, m], "bogus": 1}, model="tiny", fingerprint="x", layer="b16")
    with pytest.raises(InvalidEdit, match="paper's request format"):
        EditSpec.from_dict(req)


def test_erase_variant_zeroes_the_units_most_specific_to_the_context(rw):
    """The units are chosen here with NumPy (mean square under the area-averaged context masks over diag C,
    highest first) from keys computed by running the tiny model's blocks by hand; the solve must equal the
    one of the erase goal with exactly those units."""
    import numpy as np

    from model_rewrite.goals import erase_goal, observe
    from model_rewrite.solve import solve_update

    spec = _edit(rw, erase=True, erase_units=4, method="closed_form")
    layer = rw.spec("b16")
    diag = rw.stats("b16", spec.stats).moment.diagonal().numpy()
    under, total = np.zeros(16), 0.0
    for sel in spec.context:
        z = torch.randn(16, 1, 1, generator=torch.Generator().manual_seed(sel.seed))[None]
        with torch.no_grad():
            keys = rw.model.b8(rw.model.b4(z))[0].double().numpy()  # (16, 8, 8): the input of b16's convolution
        w = sel.mask.double().numpy().reshape(8, 4, 8, 4).mean((1, 3))  # area average to the 8x8 key grid
        w = np.where(w > 1e-3, w, 0.0)
        under += (keys**2 * w).sum((1, 2))
        total += w.sum()
    units = np.argsort(-(under / total) / diag, kind="stable")[:4]
    got = rw.solve(spec)
    z = rw.latents([spec.paste.seed])
    obs = observe(rw.model, layer, z)
    goal = erase_goal(rw.model, layer, z, obs, spec.paste.mask, torch.from_numpy(units))
    want = solve_update(rw.model, layer, rw.edit_directions(spec), goal, spec.update)
    assert torch.equal(got.delta.factor, want.delta.factor)
    other = erase_goal(rw.model, layer, z, obs, spec.paste.mask, torch.from_numpy(np.argsort(under / total / diag)[:4]))
    assert not torch.equal(solve_update(rw.model, layer, rw.edit_directions(spec), other, spec.update).delta.factor,
                           got.delta.factor), "the least specific units give another edit"


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model"):
        Rewriter("no-such-model")


def test_statistics_describe_the_unedited_model_even_with_edits_applied(tmp_path):
    from model_rewrite import StatsConfig

    fresh = Rewriter("tiny", cache_dir=tmp_path / "a").stats("b16", StatsConfig(num_samples=10)).moment
    rw = Rewriter("tiny", cache_dir=tmp_path / "b")
    rw.apply(_edit(rw, layer="b8"))
    w = rw.model.b8.conv.weight.clone()
    assert torch.equal(rw.stats("b16", StatsConfig(num_samples=10)).moment, fresh)
    assert torch.equal(rw.model.b8.conv.weight, w)  # the edit is back afterwards
