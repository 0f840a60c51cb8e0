"""The command line on the tiny model: every subcommand, its help, and one-line errors."""

import json
import subprocess
import sys

import pytest

from model_rewrite import Rewriter, Selection, UpdateConfig, save_edit
from model_rewrite.cli import main
from helpers import FACE_MODEL_REASON, box_mask, has_face_model

SUBCOMMANDS = ["layers", "sample", "stats", "apply", "suggest", "preview", "search", "export", "serve", "convert",
               "replay-paper"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"])
    assert exc.value.code == 0
    assert "usage: model-rewrite " + sub in capsys.readouterr().out


@pytest.fixture
def edit_file(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "cache")
    m = box_mask(32, 12, 20, 12, 20)
    spec = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m), Selection(4, m)],
                       update=UpdateConfig(steps=20), name="tiny-edit")
    return save_edit(tmp_path / "edit.json", spec)


def test_apply_writes_weights_grid_and_report(tmp_path, edit_file, capsys):
    out = tmp_path / "out"
    rc = main(["apply", str(edit_file), "--model", "tiny", "--out", str(out), "--samples", "8", "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heldout_seeds"] == list(range(1000, 1008))
    assert (out / "grid.png").stat().st_size > 0 and (out / "model.safetensors").exists()
    assert (out / "edit.json").exists() and (out / "edit.safetensors").exists()
    # the exported weights reproduce the edited images
    rw = Rewriter(str(out / "model.safetensors"))
    rw2 = Rewriter("tiny", cache_dir=tmp_path / "c")
    from model_rewrite import load_edit
    from model_rewrite.report import measure_edit

    spec, delta = load_edit(out / "edit.json")
    entry = rw2.apply(spec, delta)
    import torch

    assert torch.equal(rw.sample([1000, 1001]), rw2.sample([1000, 1001]))
    # the report's figures are those of the library's measurement of the written edit on the held-out seeds
    want = measure_edit(rw2, entry.id, list(range(1000, 1008))).report.change
    for key in ("inside_change", "outside_change", "ratio"):
        assert report[key] == getattr(want, key) == report["edits"][0][key]
    e = report["edits"][0]
    assert e["layer"] == "b16" and e["name"] == "tiny-edit" and e["steps"] == 21 and e["goal_loss"] <= e["closed_form_loss"]
    assert report["model"] == "tiny" and report["fingerprint"] == rw2.info.fingerprint
    assert e["quality"]["lines"] and "inside_change" not in e["quality"]
    printed = capsys.readouterr().out
    assert f"layer b16, inside change {report['inside_change']:.4f}" in printed and f"wrote {out}/grid.png" in printed
    # re-applying the written edit reuses its factors (no solve) and gives the same report numbers
    rc = main(["apply", str(out / "edit.json"), "--model", "tiny", "--out", str(tmp_path / "again"), "--samples", "8", "--quiet",
               "--cache-dir", str(tmp_path / "c")])
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert rc == 0 and again["edits"][0].get("reused_factors") and again["ratio"] == report["ratio"]


def test_layers_sample_stats_search_export(tmp_path, edit_file, capsys):
    c = ["--cache-dir", str(tmp_path / "c"), "--model", "tiny"]
    assert main(["layers", *c, "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in layers] == ["b4", "b8", "b16", "b32"]
    import numpy as np

    from helpers import image_from_png
    from model_rewrite.render import to_uint8

    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    assert main(["sample", *c, "--seeds", "5,2,9", "--per-row", "2", "--scale", "1", "--out", str(tmp_path / "s.png")]) == 0
    assert f"wrote {tmp_path / 's.png'} (seeds 5..9, 3 images, latents seeds)" in capsys.readouterr().out
    grid, imgs = image_from_png((tmp_path / "s.png").read_bytes()), to_uint8(rw.sample([5, 2, 9]))
    assert grid.shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # 2 rows of 2 cells, 32 px images with 2 px padding
    assert np.array_equal(grid[2:34, 2:34], imgs[0]) and np.array_equal(grid[2:34, 36:68], imgs[1])
    assert np.array_equal(grid[36:68, 2:34], imgs[2]) and (grid[36:68, 36:68] == 255).all()
    # search ranks the seeds by the max heat of the edit's first direction, computed here through the library
    assert main(["search", str(edit_file), *c, "--samples", "12", "--top", "4", "--out", str(tmp_path / "search"), "--quiet"]) == 0
    ranking = json.loads((tmp_path / "search" / "matches.json").read_text())["ranking"]
    from model_rewrite import load_edit

    spec, _ = load_edit(edit_file)
    scores = rw.heat("b16", rw.edit_directions(spec), list(range(1000, 1012))).flatten(1).amax(1)
    want = sorted(range(1000, 1012), key=lambda s: -float(scores[s - 1000]))
    assert [r["seed"] for r in ranking] == want
    assert [r["score"] for r in ranking] == pytest.approx([float(scores[s - 1000]) for s in want], rel=1e-5)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[0].split()[:2] == ["seed", str(want[0])]
    assert main(["export", str(edit_file), *c, "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "max difference 0.00e+00" in capsys.readouterr().out


def test_stats_with_and_without_a_layer_follow_their_flags(tmp_path, capsys):
    from model_rewrite import StatsConfig

    c = ["--cache-dir", str(tmp_path / "c"), "--model", "tiny", "--quiet"]
    assert main(["stats", *c, "--layer", "b16", "--num-samples", "10", "--stats-seed", "3", "--batch-size", "4",
                 "--product-dtype", "float64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("b16: C is 16x16 from 640 keys (10 samples, seed 3) in ")
    # written to the cache under those settings: the library reads the same moment back without computing it
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    cfg = StatsConfig(num_samples=10, stats_seed=3, batch_size=4, product_dtype="float64")
    calls = []
    st = rw.stats("b16", cfg, progress=lambda d, t: calls.append(d))
    assert calls == [] and st.count == 640 and st.seed == 3
    assert main(["stats", *c, "--num-samples", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split(":")[0] for l in lines] == ["b4", "b8", "b16", "b32"]
    assert "(6 samples, seed 0)" in lines[0] and "C is 16x16 from 384 keys" in lines[2]


def test_stats_and_apply_draw_progress_bars_unless_quiet(tmp_path, edit_file, capsys):
    c = ["--cache-dir", str(tmp_path / "c"), "--model", "tiny"]
    assert main(["stats", *c, "--layer", "b8", "--num-samples", "120", "--batch-size", "20"]) == 0
    err = capsys.readouterr().err
    assert "stats b8:" in err and "/120 [" in err  # tqdm redraws at most every 0.1 s
    assert main(["stats", *c, "--layer", "b16", "--num-samples", "120", "--batch-size", "20", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["apply", str(edit_file), *c, "--out", str(tmp_path / "o"), "--samples", "2", "--num-samples", "40"]) == 0
    err = capsys.readouterr().err
    assert "stats b16" in err and "solve" in err


def test_apply_several_edits_with_config_overrides(tmp_path, edit_file, capsys):
    from model_rewrite import KeyConfig, load_edit

    second = tmp_path / "second.json"
    spec, _ = load_edit(edit_file)
    save_edit(second, type(spec)(**{**spec.__dict__, "layer": "b8", "name": "on-b8"}))
    out = tmp_path / "out"
    assert main(["apply", str(edit_file), str(second), "--model", "tiny", "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                 "--samples", "4", "--quiet", "--steps", "3", "--rank", "2", "--num-samples", "30", "--fire-quantile", "0.8"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["edit"] for e in report["edits"]] == [str(edit_file), str(second)]
    assert [e["layer"] for e in report["edits"]] == ["b16", "b8"] and [e["steps"] for e in report["edits"]] == [4, 4]
    assert all(e["quantile"] == 0.8 for e in report["edits"])
    for stem in ("edit", "second"):
        written, delta = load_edit(out / f"{stem}.json")
        assert written.keys == KeyConfig(rank=2) and written.update.steps == 3 and written.stats.num_samples == 30
        assert delta.rank == 2 and (out / f"{stem}-grid.png").exists()
    assert report["ratio"] == report["edits"][-1]["ratio"] and report["all_edits_mean_change"] > 0
    assert not (out / "grid.png").exists()


def test_export_refuses_to_publish_a_model_that_reloads_differently(tmp_path, edit_file, capsys, monkeypatch):
    import model_rewrite.export as export

    monkeypatch.setattr(export, "check_export", lambda *a, **k: 0.25)
    rc = main(["export", str(edit_file), "--model", "tiny", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "\n" not in err.strip()
    assert not (tmp_path / "m.safetensors").exists()  # checked before it is published


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == "model-rewrite 0.1.0"


@pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)
def test_an_edit_for_another_model_is_refused_naming_the_loaded_model(tmp_path, edit_file):
    p = subprocess.run([sys.executable, "-m", "model_rewrite.cli", "apply", str(edit_file), "--model", "faces", "--out",
                        str(tmp_path / "x"), "--quiet"], capture_output=True, text=True)
    err = p.stderr.strip()
    assert p.returncode == 2 and "\n" not in err
    assert "made for model 'tiny'" in err and "the loaded model 'faces'" in err
    assert not (tmp_path / "x").exists()  # refused before any output


def test_errors_are_one_line_with_nonzero_exit(tmp_path, edit_file):
    def run(*args):
        p = subprocess.run([sys.executable, "-m", "model_rewrite.cli", *args], capture_output=True, text=True)
        return p.returncode, p.stderr.strip()

    rc, err = run("layers", "--model", "nope")
    assert rc == 2 and err.startswith("error: unknown model") and "\n" not in err
    (tmp_path / "broken.json").write_text("{")
    rc, err = run("apply", str(tmp_path / "broken.json"), "--model", "tiny", "--out", str(tmp_path / "y"))
    assert rc == 2 and "not valid JSON" in err
    rc, err = run("apply", str(edit_file), "--model", "tiny", "--out", str(tmp_path / "z"), "--method", "magic", "--quiet")
    assert rc == 2 and "method must be one of" in err


def test_an_edit_on_a_small_stylegan2_through_the_cli(tmp_path, capsys):
    """The same commands as on the face model, on a rosinality-format StyleGAN2 checkpoint."""
    import torch

    from stylegan2_reference import rosinality_state_dict

    sd, latent_avg = rosinality_state_dict(32)
    ckpt = tmp_path / "g.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, ckpt)
    model = f"stylegan2:{ckpt}"
    c = ["--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(["layers", "--model", model, *c[:2]]) == 0
    import re

    listed = [l.split()[0] for l in capsys.readouterr().out.splitlines()[2:]]
    from model_rewrite.layers import editable_layers

    assert listed == [spec.name for spec in editable_layers(Rewriter(model).model)]
    assert "b16.conv1" in listed and all(re.fullmatch(r"b\d+\.\w+", n) for n in listed)
    rw = Rewriter(model, cache_dir=tmp_path / "c")
    m = box_mask(32, 4, 14, 4, 14)
    spec = rw.new_edit("b16.conv1", paste=Selection(1, m), copy=Selection(2, box_mask(32, 16, 26, 16, 26)),
                       context=[Selection(1, m), Selection(3, box_mask(32, 8, 20, 8, 20))], update=UpdateConfig(steps=20))
    from model_rewrite import StatsConfig

    spec = type(spec)(**{**spec.__dict__, "stats": StatsConfig(num_samples=100)})
    edit = save_edit(tmp_path / "sg2.json", spec)
    out = tmp_path / "out"
    assert main(["apply", str(edit), "--model", model, "--out", str(out), "--samples", "8", *c]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inside_change"] > report["outside_change"] > 0
    exported = Rewriter(str(out / "model.safetensors"))
    from model_rewrite import load_edit

    spec2, delta = load_edit(out / "edit.json")
    rw.apply(spec2, delta)
    assert torch.equal(exported.sample([1000, 1001]), rw.sample([1000, 1001]))
    assert main(["search", str(edit), "--model", model, "--samples", "8", "--top", "4", "--out", str(tmp_path / "s"), *c]) == 0
    ranking = json.loads((tmp_path / "s" / "matches.json").read_text())["ranking"]
    scores = rw.heat(spec.layer, rw.edit_directions(spec), list(range(1000, 1008))).flatten(1).amax(1)
    assert [r["seed"] for r in ranking] == sorted(range(1000, 1008), key=lambda s: -float(scores[s - 1000]))


def test_search_reads_directions_with_the_edits_own_key_and_statistics_settings(tmp_path):
    """One source of directions: `search` must use the edit's KeyConfig and StatsConfig, not the defaults.

    The expected scores are built from the lower-level pieces (statistics, context keys, whitened SVD,
    heat = max over the key grid of d . k), and the defaults are checked to give other scores."""
    import torch

    from model_rewrite import KeyConfig, StatsConfig, collect_key_stats, key_directions
    from model_rewrite.goals import context_keys, observe
    from model_rewrite.search import key_maps

    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m, m2 = box_mask(32, 12, 20, 12, 20), box_mask(32, 4, 12, 18, 28)
    stats, keys = StatsConfig(num_samples=40, batch_size=20), KeyConfig(rank=2, eig_floor=1e-2)
    spec = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m), Selection(4, m2)],
                       stats=stats, keys=keys)
    path = save_edit(tmp_path / "e.json", spec)
    seeds = list(range(50, 60))
    assert main(["search", str(path), "--model", "tiny", "--cache-dir", str(tmp_path / "c"), "--seeds", "50-59",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 0
    got = {r["seed"]: r["score"] for r in json.loads((tmp_path / "s" / "matches.json").read_text())["ranking"]}

    layer = rw.spec("b16")

    def scores(st: StatsConfig, kc: KeyConfig) -> dict[int, float]:
        cov = collect_key_stats(rw.model, layer, st, latent_shape=rw.info.latent_shape).moment
        obs = [(observe(rw.model, layer, rw.latents([s.seed])), s.mask) for s in spec.context]
        d = key_directions(*context_keys(obs), cov, kc.rank, kc.eig_floor)
        k = key_maps(rw.model, layer, rw.latents(seeds))
        heat = torch.einsum("nchw,c->nhw", k.double(), d[0].double())
        return {s: float(h.max()) for s, h in zip(seeds, heat)}

    want = scores(stats, keys)
    assert got.keys() == want.keys() and all(abs(got[s] - want[s]) <= 1e-4 * max(1.0, abs(want[s])) for s in seeds)
    default = scores(StatsConfig(), KeyConfig())
    assert max(abs(default[s] - want[s]) for s in seeds) > 1e-2  # the settings matter, so the test can fail


def test_suggest_tries_layers_and_ranks_and_applies_the_best(tmp_path, edit_file, capsys):
    out = tmp_path / "sg"
    rc = main(["suggest", str(edit_file), "--model", "tiny", "--cache-dir", str(tmp_path / "c"), "--ranks", "1,2",
               "--samples", "6", "--num-samples", "60", "--out", str(out), "--quiet", "--apply-best"])
    assert rc == 0
    result = json.loads((out / "suggest.json").read_text())
    tried = {(c["layer"], c["rank"]) for c in result["candidates"]}
    assert tried == {(layer, rank) for layer in ("b8", "b16", "b32") for rank in (1, 2)}  # b4's grid is 1x1
    best = result["candidates"][0]
    assert result["best"] == {"layer": best["layer"], "rank": best["rank"]}
    solved = [c for c in result["candidates"] if c["score"] is not None]
    assert [c["score"] for c in solved] == sorted((c["score"] for c in solved), reverse=True)
    for c in solved:  # the documented score: net change where the rule fires
        assert c["score"] == pytest.approx(c["inside_change"] - c["outside_change"] - c["collateral"])
        assert c["locality"] == pytest.approx(c["inside_change"] / c["outside_change"], rel=1e-4)
    # --apply-best wrote what apply writes, for the chosen layer and rank
    from model_rewrite import load_edit

    spec, delta = load_edit(out / "edit.json")
    assert (spec.layer, spec.keys.rank) == (best["layer"], best["rank"]) and delta is not None
    report = json.loads((out / "report.json").read_text())
    assert report["edits"][0]["layer"] == best["layer"] and report["edits"][0]["quality"]["lines"]
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["layer", "rank", "score", "transfer", "fidelity", "locality",
                                               "inside", "outside", "collateral", "seconds"]
    first = printed.splitlines()[1].split()  # the best row shows the figures its score is made of
    assert first[:2] == [best["layer"], str(best["rank"])]
    assert [float(v) for v in first[6:9]] == pytest.approx(
        [best["inside_change"], best["outside_change"], best["collateral"]], abs=6e-4)


def test_suggest_leaves_the_model_and_its_redo_list_as_they_were(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    m = box_mask(32, 12, 20, 12, 20)
    spec = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m)],
                       update=UpdateConfig(steps=5))
    first = rw.apply(spec)
    rw.apply(spec)
    rw.stack.undo()
    images = rw.sample([7, 8])
    cands = rw.suggest(spec, layers=["b16", "b32"], ranks=[1], seeds=[40, 41])
    assert [c.layer for c in cands if c.quality is not None] and len(cands) == 2
    import torch

    assert torch.equal(rw.sample([7, 8]), images)
    assert [e.id for e in rw.stack.entries] == [first.id] and len(rw.stack.undone) == 1
