"""The multi-edit file (multiedit.py) and `apply --joint`: a round trip reproduces the applied weights to the bit,
bad files are refused with one-line errors naming the problem, and the CLI writes the interference table."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import box_mask

from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig, save_edit
from model_rewrite.cli import main
from model_rewrite.errors import IncompatibleEdit, InvalidEdit
from model_rewrite.multiedit import load_multi_edit, save_multi_edit


@pytest.fixture
def batch(tmp_path):
    rw = Rewriter("tiny", cache_dir=tmp_path / "c")
    stats, cfg = StatsConfig(num_samples=100), UpdateConfig(steps=10)
    m, n = box_mask(32, 8, 20, 8, 20), box_mask(32, 2, 12, 18, 28)
    edits = [rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, n), update=cfg, stats=stats, name="a"),
             rw.new_edit("b8", paste=Selection(4, n), copy=Selection(2, m), update=cfg, stats=stats, name="c"),
             rw.new_edit("b16", paste=Selection(5, n), copy=Selection(6, m), update=cfg, stats=stats, name="b")]
    return rw, edits


def test_round_trip_reproduces_the_applied_weights(tmp_path, batch):
    rw, edits = batch
    results = rw.solve_many(edits)
    path = save_multi_edit(tmp_path / "batch.json", edits, results, name="three")
    data = json.loads(path.read_text())
    assert data["format"] == "model-rewrite-multi-edit" and data["version"] == 1
    assert [g["layer"] for g in data["groups"]] == ["b8", "b16"] and [g["members"] for g in data["groups"]] == [[1], [0, 2]]
    specs, solved = load_multi_edit(path)
    assert [s.to_dict() for s in specs] == [e.to_dict() for e in edits]
    for got, want in zip(solved, results):
        assert torch.equal(got.delta.factor, want.delta.factor) and torch.equal(got.delta.dirs, want.delta.dirs)
        assert all(torch.equal(g.dirs, w.dirs) for g, w in zip(got.members, want.members))
    rw.apply_many(specs, solved)
    from_file = {k: v.clone() for k, v in rw.model.state_dict().items()}
    rw.stack.revert_all()
    rw.apply_many(edits, results)
    assert all(torch.equal(from_file[k], v) for k, v in rw.model.state_dict().items())
    # an unsolved batch: members only, and no stale factors beside it
    save_multi_edit(path, edits)
    assert load_multi_edit(path)[1] is None and not path.with_suffix(".safetensors").exists()


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case,error,words", [
    ("layer", IncompatibleEdit, "is at layer b16 but its group 1 was solved at layer b8"),
    ("model", IncompatibleEdit, "was made for model"),
    ("duplicate", InvalidEdit, "are the same rule"),
    ("two groups", InvalidEdit, "is in groups"),
    ("version", IncompatibleEdit, "version 9 is not supported"),
    ("factors", IncompatibleEdit, "holds the factors of another batch"),
    ("member", InvalidEdit, "member 1: "),
])
def test_bad_multi_edit_files_are_refused_in_one_line(tmp_path, batch, case, error, words):
    rw, edits = batch
    path = save_multi_edit(tmp_path / "batch.json", edits, rw.solve_many(edits))
    data = json.loads(path.read_text())
    if case == "layer":
        data["groups"][1]["layer"] = "b8"
    elif case == "model":
        data["members"][2]["fingerprint"] = "0" * 16
    elif case == "duplicate":
        data["members"].append(dict(data["members"][0], name="again"))
        data["groups"][1]["members"].append(3)
    elif case == "two groups":
        data["groups"][1]["members"].append(1)
    elif case == "version":
        data["version"] = 9
    elif case == "factors":  # the JSON changed after solving: its factors no longer belong to it
        data["members"][0]["update"]["steps"] = 11
    elif case == "member":
        data["members"][1]["paste"] = {"seed": -1, "mask": "x"}
    _write(path, data)
    with pytest.raises(error) as exc:
        load_multi_edit(path)
    assert words in str(exc.value) and "\n" not in str(exc.value)
    # the command line says the same in one line and exits 2
    assert main(["apply", str(path), "--model", "tiny", "--out", str(tmp_path / "o"), "--quiet",
                 "--cache-dir", str(tmp_path / "c")]) == 2


def test_apply_joint_writes_the_batch_and_the_interference_table(tmp_path, batch, capsys, caplog):
    rw, edits = batch
    paths = [save_edit(tmp_path / f"{e.name}.json", e) for e in edits[::2]]  # a and b, both at b16
    out = tmp_path / "out"
    args = ["--model", "tiny", "--samples", "6", "--quiet", "--cache-dir", str(tmp_path / "c")]
    assert main(["apply", *map(str, paths), "--joint", "--out", str(out), *args]) == 0
    text = capsys.readouterr().out
    assert "layer b16: 2 rules solved together, rank 2 of 2" in text and "total collateral:" in text
    report = json.loads((out / "report.json").read_text())
    rows = report["interference"]
    assert [(r["name"], r["setting"]) for r in rows] == [(n, s) for n in ("a", "b") for s in ("alone", "joint", "sequential")]
    assert all(isinstance(r["paste_fidelity"], float) and r["collateral"] >= 0 for r in rows)
    # the rules' overlap, against the single-direction formula |a C b| / sqrt(a C a  b C b) in float64
    da, db = (rw.edit_directions(e).to(torch.float64)[0] for e in edits[::2])
    cov = rw.stats("b16", edits[0].stats).moment.to(torch.float64)
    want = float(abs(da @ cov @ db) / torch.sqrt((da @ cov @ da) * (db @ cov @ db)))
    (o,) = report["overlaps"]
    assert o["rules"] == ["a", "b"] and o["layer"] == "b16" and o["overlap"] == pytest.approx(want, abs=1e-9)
    assert o["warns"] == (want >= 0.1) and (("overlap: 'a' and 'b'" in caplog.text) == o["warns"])
    # stacked (no --joint): the second edit's overlap with the first
    assert main(["apply", *map(str, paths), "--out", str(tmp_path / "seq"), *args]) == 0
    seq = json.loads((tmp_path / "seq" / "report.json").read_text())["edits"]
    assert seq[0]["overlaps"] == [] and seq[1]["overlaps"][0]["overlap"] == pytest.approx(want, abs=1e-9)
    # the written batch applies again without solving, to the same weights
    assert main(["apply", str(out / "joint.json"), "--out", str(tmp_path / "again"), "--no-interference", *args]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["reused_factors"] and again["all_edits_mean_change"] == report["all_edits_mean_change"]
    from safetensors.torch import load_file

    w1, w2 = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
