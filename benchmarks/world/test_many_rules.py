"""A small end-to-end run of the many-rules world benchmark (bench_many_rules.py), and its fill-copy helper."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent
MODEL = BENCH / "world_gan.safetensors"
sys.path.insert(0, str(BENCH))


def _load():
    for name in ("bench_world", "bench_many_rules"):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # dataclasses look their module up
            spec.loader.exec_module(mod)
    return sys.modules["bench_many_rules"]


def test_fill_box_finds_the_box_the_class_fills_most():
    bench = _load()
    import world

    labels = np.full((3, 10, 10), world.CLASS_INDEX["sky"])
    labels[1, 2:6, 3:8] = world.CLASS_INDEX["wall"]  # a 4 x 5 wall on image 1
    labels[2, 0:2, 0:2] = world.CLASS_INDEX["wall"]
    assert bench.fill_box(labels, "wall", 4, 5, skip=0) == (1, 2, 3, 1.0)
    assert bench.fill_box(labels, "wall", 4, 5, skip=1)[0] == 2  # the paste image itself is never the copy


@pytest.mark.skipif(not MODEL.is_file(), reason="the trained world generator is not committed")
def test_small_many_rules_run(tmp_path):
    torch.set_num_threads(1)
    bench = _load()
    args = bench.parse_args(["--seeds", "10", "--pool", "120", "--contexts", "2", "--stats-samples", "60",
                             "--steps-scale", "0.02", "--out", str(tmp_path)])
    results = bench.run(args)
    names = [t.name for t in bench.RULES]
    assert len(names) == 6 and {"cloud_to_sky", "door_to_wall", "tower_to_wall"} < set(names)
    for method in ("closed_form", "default"):
        res = results["methods"][method]
        assert list(res["rules"]) == names
        for rows in res["rules"].values():
            assert {"alone", "joint", "sequential", "summed"} <= set(rows)
            assert all(0.0 <= r["success"] <= 1.0 for r in rows.values())
        assert res["models"]["joint"]["rank"] == 6
        assert all(0.0 <= res["models"][s]["label_collateral"] <= 1.0 for s in ("joint", "sequential", "summed"))
        assert set(res["targets"]) == {"joint_keeps_90pc_of_alone_success", "joint_total_collateral_at_most_sequential"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["n_eval"] == 10 and "six rules at once" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "examples.png").stat().st_size > 0


def _load_pairs():
    _load()
    if "bench_rule_pairs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_rule_pairs", BENCH / "bench_rule_pairs.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_rule_pairs"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_rule_pairs"]


@pytest.mark.skipif(not MODEL.is_file(), reason="the trained world generator is not committed")
def test_small_rule_pairs_run(tmp_path):
    torch.set_num_threads(1)
    pairs = _load_pairs()
    res = pairs.main(["--seeds", "4", "--pool", "120", "--contexts", "2", "--stats-samples", "60", "--out", str(tmp_path)])
    assert len(res["pairs"]) == 15 and len(res["names"]) == 6  # the overlap itself: tests/test_directions.py
    assert all(0.0 <= p["overlap"] <= 1.0 for p in res["pairs"])
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") == 17  # header, rule, 15 pairs
