"""The config dataclasses: defaults, range checks, strict parsing from JSON, and edit files of format 1
(direction settings inside "update") read as format 2 (inside "keys")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_rewrite.config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig, config_from_dict, config_to_dict
from model_rewrite.edits import EDIT_VERSION, EditSpec, load_edit
from model_rewrite.errors import InvalidEdit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_are_the_documented_ones():
    assert (KeyConfig().rank, KeyConfig().eig_floor) == (1, 1e-6)
    u = UpdateConfig()
    assert (u.method, u.steps, u.lr, u.loss, u.preserve, u.erase_units, u.ridge) == ("optimize", 150, 0.05, "l1", 1.0, 30, 1e-4)
    assert (StatsConfig().num_samples, StatsConfig().product_dtype) == (1000, "float32")
    assert (RenderConfig().fire_quantile, RenderConfig().heat_direction) == (0.98, 0)


@pytest.mark.parametrize("make, word", [
    (lambda: KeyConfig(rank=0), "rank"),
    (lambda: KeyConfig(eig_floor=-1.0), "eig_floor"),
    (lambda: KeyConfig(eig_floor=float("nan")), "eig_floor"),
    (lambda: UpdateConfig(steps=-1), "steps"),
    (lambda: UpdateConfig(lr=0.0), "lr"),
    (lambda: UpdateConfig(loss="l3"), "loss"),
    (lambda: StatsConfig(num_samples=0), "num_samples"),
    (lambda: StatsConfig(product_dtype="float16"), "product_dtype"),
    (lambda: RenderConfig(fire_quantile=1.0), "fire_quantile"),
    (lambda: RenderConfig(heat_direction=-1), "heat_direction"),
])
def test_out_of_range_values_name_the_field(make, word):
    with pytest.raises(InvalidEdit, match=word):
        make()


def test_config_from_dict_is_strict_and_fills_defaults():
    assert config_from_dict(KeyConfig, {"rank": 3}) == KeyConfig(rank=3)
    assert config_from_dict(UpdateConfig, {"lr": 1}) == UpdateConfig(lr=1.0)  # JSON ints are floats where floats are due
    assert config_from_dict(StatsConfig, None) == StatsConfig()
    with pytest.raises(InvalidEdit, match=r"unknown KeyConfig key\(s\) \['steps'\]"):
        config_from_dict(KeyConfig, {"steps": 3})
    with pytest.raises(InvalidEdit, match="rank must be int"):
        config_from_dict(KeyConfig, {"rank": True})
    with pytest.raises(InvalidEdit, match="JSON object"):
        config_from_dict(KeyConfig, [1])
    assert config_to_dict(KeyConfig(rank=2)) == {"rank": 2, "eig_floor": 1e-6}


def test_a_format_1_edit_reads_with_its_direction_settings_moved_to_keys(tmp_path):
    data = json.loads((EXAMPLES / "add-glasses" / "edit.json").read_text())
    assert data["version"] == 1 and "rank" in data["update"]  # the examples were written in format 1
    data["update"].update(rank=2, eig_floor=1e-4, steps=7)
    spec = EditSpec.from_dict(data)
    assert spec.keys == KeyConfig(rank=2, eig_floor=1e-4) and spec.update.steps == 7
    out = spec.to_dict()
    assert out["version"] == EDIT_VERSION == 3 and out["keys"] == {"rank": 2, "eig_floor": 1e-4}
    assert "rank" not in out["update"] and "eig_floor" not in out["update"]
    assert EditSpec.from_dict(out).to_dict() == out
    (tmp_path / "e.json").write_text(json.dumps(data))
    assert load_edit(tmp_path / "e.json")[0].keys.rank == 2


def test_unknown_versions_are_refused():
    data = json.loads((EXAMPLES / "add-glasses" / "edit.json").read_text())
    with pytest.raises(Exception, match="version 4 is not supported"):
        EditSpec.from_dict(dict(data, version=4))
