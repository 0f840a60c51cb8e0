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


def test_fast_labeller_equals_the_labeller():
    import world_metrics

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    images[0, 0, :11] = world.PALETTE.astype(np.uint8)  # palette centres
    # a pixel exactly half-way between two palette colours: both pick the first class
    images[0, 1, 0] = ((world.PALETTE[0] + world.PALETTE[6]) / 2).astype(np.uint8)
    assert np.array_equal(world_metrics.fast_labels(images), world.labels_from_image(images))


def test_mode_filter_removes_specks_and_keeps_blocks():
    import world_metrics

    lab = np.zeros((1, 12, 12), np.int64)
    lab[0, 2, 2] = 3  # a one-pixel speck
    lab[0, 6:10, 6:10] = 5  # a 4x4 block
    out = world_metrics.mode_filter(lab, 6)
    assert out[0, 2, 2] == 0
    assert (out[0, 7:9, 7:9] == 5).all() and out[0, 6, 6] == 0  # the block loses its corners only
    assert (out == 5).sum() == 12


def test_objects_and_object_success():
    import world_metrics

    lab = np.zeros((2, 10, 10), np.int64)
    lab[0, 1:3, 1:4] = 1  # object A: 6 pixels
    lab[0, 6:9, 6:8] = 1  # object B: 6 pixels
    lab[1, 0, 9] = 1  # a speck, below MIN_OBJECT_PIXELS: not an object
    obj = world_metrics.objects(lab, 1)
    assert len(np.unique(obj[obj > 0])) == 2 and obj[1].max() == 0
    after = lab.copy()
    after[0, 1:3, 1:3] = 2  # 4 of A's 6 pixels take the target: rewritten
    after[0, 6:9, 6] = 2  # 3 of B's 6: not more than half, not rewritten
    assert world_metrics.object_success(obj, after, 2) == (0.5, 2)


def test_spearman_with_ties():
    import world_metrics

    assert np.allclose(world_metrics.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    assert world_metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert world_metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138
    assert world_metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)


def test_suggest_hit_rule():
    import world_report

    configs = [{"layer": "b8", "rank": 1, "success": 0.5, "label_collateral": 0.2},
               {"layer": "b16", "rank": 1, "success": 0.3, "label_collateral": 0.01},
               {"layer": "b16", "rank": 2, "success": 0.3, "label_collateral": 0.04}]
    h = world_report.suggest_hit(configs, {"layer": "b16", "rank": 2}, "success", 0.05)
    assert h["hit"] and h["pick_place"] == 1 and h["acceptable"] == 2  # a tie with the best counts
    h = world_report.suggest_hit(configs, {"layer": "b8", "rank": 1}, "success", 0.05)
    assert not h["hit"] and h["pick_place"] is None  # over the bound


@pytest.mark.skipif(not MODEL.is_file(), reason="the trained world generator is not committed")
def test_small_benchmark_runs_end_to_end(tmp_path):
    torch.set_num_threads(1)
    bench = _load_bench()
    args = bench.parse_args(["--seeds", "8", "--pool", "60", "--contexts", "2", "--layers", "b32", "--ranks", "1,2",
                             "--steps-scale", "0.005", "--stats-samples", "50", "--quality-seeds", "4",
                             "--suggest-seeds", "4", "--examples", "2", "--out", str(tmp_path)])
    results = bench.run(args)
    assert set(results["edits"]) == {"dome_to_tree", "erase_windows", "roof_to_dome"}
    assert results["meta"]["reference_steps"] == 10  # 2001 steps scaled by 0.005
    methods = {r["method"] for r in results["runs"]}
    assert {"reference_authors", "suggest", "ours_rank2", "finetune_all_weights"} <= methods
    for r in results["runs"]:
        assert 0.0 <= r["success"] <= 1.0 and r["seconds"] >= 0.0
        if r["method"] == "unedited":
            assert r["label_collateral"] == 0.0 and (r["object_success"] == 0.0 or np.isnan(r["object_success"]))
    copy_runs = [r for r in results["runs"] if r["edit"] != "erase_windows" and r["layer"] == "b32" and r["quality"]]
    assert all(r["quality"]["transfer"] is not None for r in copy_runs)
    for edit, info in results["edits"].items():
        assert info["suggest"]["pick"]["layer"] == "b32" and len(info["suggest"]["candidates"]) == 2
        assert "success@bound" in results["analysis"]["suggest"][edit]
    assert results["analysis"]["correlations"]["transfer_vs_success"]["n"] == 2 * 6  # copy edits x layer methods
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["n_eval"] == 8
    for f in ("results.md", "success_vs_collateral.png", "quality_vs_exact.png", "examples_dome_to_tree_b32.png",
              "objects_roof_to_dome.png"):
        assert (tmp_path / f).stat().st_size > 0
