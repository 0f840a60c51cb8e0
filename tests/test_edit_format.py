"""The edit file format (edits.py) by hand, without a model: the JSON written field by field, versions 1 and 2 read as
version 3, every refusal with its message, and the factors file beside the JSON."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import box_mask

from model_rewrite.config import KeyConfig, StatsConfig, UpdateConfig
from model_rewrite.edits import EDIT_FORMAT, EditSpec, Selection, factors_path, load_edit, save_edit, selection_from_dict
from model_rewrite.errors import IncompatibleEdit, InvalidEdit
from model_rewrite.masks import data_url_from_mask
from model_rewrite.update import LowRankDelta

M = box_mask(8, 2, 5, 1, 4)


def _spec(**kw) -> EditSpec:
    base = dict(model="tiny", fingerprint="abc123", layer="b16", paste=Selection(3, M), copy=Selection(1, M),
                context=(Selection(4, M), Selection(2, M)), update=UpdateConfig(steps=7), stats=StatsConfig(num_samples=9),
                name="n", note="a note", keys=KeyConfig(rank=2, eig_floor=0.01))
    return EditSpec(**{**base, **kw})


def test_the_json_form_field_by_field():
    d = _spec().to_dict()
    url = data_url_from_mask(M)
    assert d == {"format": "model-rewrite-edit", "version": 3, "name": "n", "model": "tiny", "fingerprint": "abc123",
                 "layer": "b16", "context": [{"seed": 4, "mask": url}, {"seed": 2, "mask": url}],
                 "copy": {"seed": 1, "mask": url}, "paste": {"seed": 3, "mask": url}, "query": None, "latents": "seeds",
                 "keys": {"rank": 2, "eig_floor": 0.01}, "update": {**UpdateConfig(steps=7).__dict__},
                 "stats": {**StatsConfig(num_samples=9).__dict__}, "note": "a note"}
    back = EditSpec.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d and back.keys == KeyConfig(rank=2, eig_floor=0.01) and back.note == "a note"
    erase = _spec(copy=None, context=()).to_dict()
    assert erase["copy"] is None and erase["context"] == []
    back = EditSpec.from_dict(erase)
    assert back.copy is None and back.context == () and back.name == "n"


def test_selection_seeds_and_the_context_or_paste():
    s = _spec()
    assert s.selection_seeds == [1, 2, 3, 4] and s.context_or_paste == s.context
    e = _spec(copy=None, context=())
    assert e.selection_seeds == [3] and e.context_or_paste == (e.paste,)


def test_version_1_files_move_rank_and_eig_floor_to_keys():
    d = _spec().to_dict()
    d["version"] = 1
    del d["keys"]
    d["update"] = {**d["update"], "rank": 3, "eig_floor": 0.2}
    spec = EditSpec.from_dict(d)
    assert spec.keys == KeyConfig(rank=3, eig_floor=0.2) and spec.update == UpdateConfig(steps=7)
    with_keys = {**d, "keys": {"rank": 5}, "update": {"steps": 4}}  # a version 1 file that has "keys" keeps them
    assert EditSpec.from_dict(with_keys).keys == KeyConfig(rank=5)
    d["update"] = {"steps": 4}  # neither given: the defaults
    assert EditSpec.from_dict(d).keys == KeyConfig()
    assert d["version"] == 1, "the caller's dict is not changed"
    minimal = {k: v for k, v in d.items() if k not in ("name", "note", "context", "copy", "update", "stats")}
    spec = EditSpec.from_dict(minimal)
    assert (spec.name, spec.note, spec.context, spec.copy, spec.update) == ("", "", (), None, UpdateConfig())


@pytest.mark.parametrize("change, error, match", [
    (lambda d: [1, 2], InvalidEdit, "^an edit file must hold a JSON object$"),
    (lambda d: {"paste": [[3, "x"]]}, InvalidEdit, "^this looks like the original paper's request format; load it with model_rewrite.paper_format.edit_from_paper_request \\(CLI: pass --model and --layer\\)$"),
    (lambda d: {**d, "format": "other"}, InvalidEdit, "^not a model-rewrite edit \\(format is 'other', expected 'model-rewrite-edit'\\)$"),
    (lambda d: {k: v for k, v in d.items() if k not in ("format", "paste")}, InvalidEdit, "request format"),
    (lambda d: {**d, "version": 4}, IncompatibleEdit, "^edit format version 4 is not supported \\(this version reads 1 to 3\\)$"),
    (lambda d: {**d, "extra": 1, "more": 2}, InvalidEdit, "unknown key\\(s\\) \\['extra', 'more'\\] in edit"),
    (lambda d: {**d, "model": ""}, InvalidEdit, "^edit field 'model' must be a non-empty string$"),
    (lambda d: {**d, "fingerprint": 5}, InvalidEdit, "edit field 'fingerprint' must be a non-empty string"),
    (lambda d: {k: v for k, v in d.items() if k != "layer"}, InvalidEdit, "edit field 'layer' must be a non-empty string"),
    (lambda d: {**d, "paste": None, "context": [], "query": None}, InvalidEdit,
     "^edit needs a 'paste' selection \\(or, for a search request, a 'context' or 'query'\\)$"),
    (lambda d: {**d, "context": {"seed": 1}}, InvalidEdit, "^edit field 'context' must be a list of selections, got dict$"),
    (lambda d: {**d, "context": [{"seed": 1}]}, InvalidEdit, "^context\\[0\\] must be an object with exactly 'seed' and 'mask'$"),
    (lambda d: {**d, "copy": {**d["copy"], "x": 1}}, InvalidEdit, "^copy must be an object with exactly"),
    (lambda d: {**d, "paste": {"mask": d["paste"]["mask"]}}, InvalidEdit, "^paste must be an object with exactly"),
    (lambda d: {**d, "paste": {**d["paste"], "seed": True}}, InvalidEdit, "^paste.seed must be a non-negative integer \\(0 to 2147483647\\), got True$"),
    (lambda d: {**d, "paste": {**d["paste"], "seed": 1.0}}, InvalidEdit, "paste.seed must be a non-negative integer \\(0 to 2147483647\\), got 1.0"),
    (lambda d: {**d, "keys": {"rank": 0}}, InvalidEdit, "KeyConfig.rank must lie in \\[1, 256\\], got 0"),
    (lambda d: {**d, "context": [5]}, InvalidEdit, "^context\\[0\\] must be an object with exactly 'seed' and 'mask'$"),
    (lambda d: {**d, "context": [d["paste"], {**d["paste"], "seed": -2}]}, InvalidEdit, "^context\\[1\\].seed must be"),
])
def test_refusals_name_the_problem(change, error, match):
    with pytest.raises(error, match=match):
        EditSpec.from_dict(change(_spec().to_dict()))


def test_selections_accept_seed_zero():
    assert selection_from_dict({"seed": 0, "mask": data_url_from_mask(M)}, "paste").seed == 0


def _delta() -> LowRankDelta:
    return LowRankDelta("b16.conv.weight", 0, torch.arange(6.0).reshape(1, 2, 3), torch.tensor([[0.6, 0.8]]))


def test_save_and_load_with_and_without_factors(tmp_path):
    spec = _spec()
    path = save_edit(tmp_path / "e.json", spec)
    assert path == tmp_path / "e.json" and not factors_path(path).exists()
    assert load_edit(path)[1] is None and load_edit(str(path))[0].to_dict() == spec.to_dict()
    save_edit(path, spec, _delta())
    assert factors_path(path) == tmp_path / "e.safetensors"
    back, delta = load_edit(path)
    d = _delta()
    assert (delta.param_path, delta.key_axis) == (d.param_path, d.key_axis)
    assert torch.equal(delta.factor, d.factor) and torch.equal(delta.dirs, d.dirs)
    with pytest.raises(InvalidEdit, match="^edit files end in .json, got e.txt$"):
        save_edit(tmp_path / "e.txt", spec)
    written = json.loads(path.read_text())  # the JSON holds the factors' sha256 beside the spec
    assert {k: v for k, v in written.items() if k != "factors_sha256"} == spec.to_dict() and written["format"] == EDIT_FORMAT
    assert len(written["factors_sha256"]) == 64
    from model_rewrite.cache import load_tensors

    _, meta = load_tensors(factors_path(path))
    assert meta == {"param_path": "b16.conv.weight", "key_axis": 0, "fingerprint": "abc123", "layer": "b16",
                    "format": EDIT_FORMAT, "version": 3}
    with pytest.raises(InvalidEdit, match="^refusing to save an edit whose solved factors hold NaN or infinite values$"):
        save_edit(path, spec, LowRankDelta(d.param_path, 0, d.factor, d.dirs * float("inf")))
    with pytest.raises(InvalidEdit, match=f"^edit file {tmp_path / 'none.json'} does not exist$"):
        load_edit(tmp_path / "none.json")


def test_factors_for_another_model_or_layer_or_not_finite_are_refused(tmp_path):
    path = save_edit(tmp_path / "e.json", _spec(), _delta())
    for other in (_spec(fingerprint="zzz"), _spec(layer="b8")):
        path.write_text(json.dumps(other.to_dict()))
        with pytest.raises(IncompatibleEdit, match="^e.safetensors was solved for another model or layer than the edit; delete it to re-solve$"):
            load_edit(path)
    from model_rewrite.cache import save_tensors

    path.write_text(json.dumps(_spec().to_dict()))  # a file from before the factors' checksum: its factors are read
    d = _delta()
    save_tensors(factors_path(path), {"factor": d.factor * float("nan"), "dirs": d.dirs},
                 {"param_path": d.param_path, "key_axis": 0, "fingerprint": "abc123", "layer": "b16"})
    with pytest.raises(InvalidEdit, match=f"^{factors_path(path)} holds NaN or infinite values; delete it to re-solve$"):
        load_edit(path)
