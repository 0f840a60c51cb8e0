"""The procedural world benchmark: scenes, labeller, and a small end-to-end run of the benchmark.

Lives beside the benchmark (the package does not ship the world); pytest collects it through `testpaths`."""

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
sys.path.insert(0, str(BENCH))  # the benchmark's scripts import `world` from their own folder

import world  # noqa: E402


def test_scene_is_a_function_of_its_seed():
    a_img, a_lab = world.scene_from_seed(7)
    b_img, b_lab = world.scene_from_seed(7)
    c_img, _ = world.scene_from_seed(8)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8 and a_lab.shape == (64, 64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_class_colour_bands_are_disjoint():
    d = np.sqrt(((world.PALETTE[:, None] - world.PALETTE[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    # a drawn colour strays (Euclidean) at most jitter + 3 sigma on every channel; bands must not reach half-way
    stray = np.sqrt(3) * (world.COLOUR_JITTER + 3 * world.PIXEL_NOISE)
    assert d.min() > 2 * stray


def test_every_class_appears_and_rules_hold_in_the_training_data():
    _, labels = world.scenes_from_seeds(range(200))
    assert (world.label_fractions(labels) > 0).all()
    rules = world.rule_statistics(labels)
    assert rules["window_on_wall"] == 1.0 and rules["trunk_on_ground"] == 1.0
    assert rules["top_on_tower"] > 0.9 and 0.3 < rules["dome_share"] < 0.7


def test_labeller_reads_held_out_scenes_at_95_percent():
    images, labels = world.scenes_from_seeds(range(1_000_000, 1_000_100))
    acc = (world.labels_from_image(images) == labels).mean()
    assert acc >= 0.95
    # the generator's float output in [-1, 1] is read the same way
    as_float = images.astype(np.float32) / 127.5 - 1.0
    assert (world.labels_from_image(as_float) == labels).mean() >= 0.95


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_world", BENCH / "bench_world.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_world"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_dilate_and_components():
    bench = _load_bench()
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    assert bench.dilate(m, 1).sum() == 9 and bench.dilate(m, 2).sum() == 25
    m[0, 0] = True
    assert bench.largest_component(bench.dilate(m, 1)).sum() == 9


def test_measure_scores_a_known_edit():
    bench = _load_bench()
    task = bench.TASKS[0]  # dome -> canopy
    lab = np.full((1, 16, 16), world.CLASS_INDEX["sky"])
    lab[0, 2:4, 2:4] = world.CLASS_INDEX["dome"]
    before = world.colour_labels(lab)
    lab_after = lab.copy()
    lab_after[0, 2:4, 2:3] = world.CLASS_INDEX["canopy"]  # half of the dome becomes tree
    lab_after[0, 15, 15] = world.CLASS_INDEX["ground"]  # one collateral pixel far away
    r = bench.measure(before, world.colour_labels(lab_after), task, dilation=1)
    assert r["success"] == pytest.approx(0.5)
    assert r["label_collateral"] == pytest.approx(1 / (256 - 16))


@pytest.mark.skipif(not MODEL.is_file(), reason="the trained world generator is not committed")
def test_small_benchmark_runs_end_to_end(tmp_path):
    torch.set_num_threads(1)
    bench = _load_bench()
    args = bench.parse_args(["--seeds", "12", "--pool", "60", "--contexts", "2", "--rank", "2", "--steps-scale", "0.005",
                             "--stats-samples", "50", "--examples", "3", "--out", str(tmp_path)])
    results = bench.run(args)
    assert set(results["edits"]) == {"dome_to_tree", "erase_windows", "roof_to_dome"}
    for rows in results["edits"].values():
        # the unedited model changes nothing: no pixel of the context class carries the target label yet
        base = rows["unedited"]
        assert base["label_collateral"] == 0.0 and base["pixel_collateral"] == 0.0
        assert base["success"] == 0.0 and base["success_per_image_mean"] == 0.0
        methods = {name: r for name, r in rows.items() if not name.startswith("_")}
        assert len(methods) > 1
        for name, r in methods.items():
            # every method is measured on the same held-out images (the same context pixels), success as a share
            assert (r["context_pixels"], r["images_with_context"]) == (base["context_pixels"], base["images_with_context"])
            assert base["context_pixels"] > 0 and 0.0 <= r["success"] <= 1.0 and r["seconds"] >= 0.0
            assert (r["pixel_change_in_context"] > 0) == (name != "unedited"), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["n_eval"] == 12
    assert saved["edits"] == json.loads(json.dumps(results["edits"]))  # what is written is what was measured
    for f in ("results.md", "success_vs_collateral.png", "examples_dome_to_tree.png"):
        assert (tmp_path / f).stat().st_size > 0
