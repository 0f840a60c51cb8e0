"""The command line against careless input (issue 10, items 8, 10, 11, 12): one-line errors for every bad
value, an output folder replaced as a whole or not at all, inputs never overwritten, the wrong model named
before any work, and `kill -9` during apply and export leaving the old output or the new one."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import box_mask

from model_rewrite import Rewriter, Selection, UpdateConfig, save_edit
from model_rewrite.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cli(*args: str, timeout: float = 300) -> tuple[int, str]:
    """Exit status and stderr of the command in a fresh process (what a user sees)."""
    p = subprocess.run([sys.executable, "-m", "model_rewrite.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env=ENV)
    return p.returncode, p.stderr.strip()


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit status and stderr of the command run in this process (fast: no new interpreter and torch import)."""
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny-model edit (edit.json), its statistics cached, and variants of it."""
    tmp = tmp_path_factory.mktemp("cli")
    rw = Rewriter("tiny", cache_dir=tmp / "cache")
    m = box_mask(32, 12, 20, 12, 20)
    spec = rw.new_edit("b16", paste=Selection(3, m), copy=Selection(1, m), context=[Selection(3, m)],
                       update=UpdateConfig(steps=5), name="tiny-edit")
    save_edit(tmp / "edit.json", spec)
    data = json.loads((tmp / "edit.json").read_text())
    (tmp / "bigseed.json").write_text(json.dumps(dict(data, paste=dict(data["paste"], seed=2**70))))
    (tmp / "ctxdict.json").write_text(json.dumps(dict(data, context={})))
    (tmp / "bad.json").write_text(json.dumps(dict(data, update={"steps": "many"})))
    bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]) + bytes(40)
    url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    (tmp / "bomb.json").write_text(json.dumps(dict(data, paste=dict(data["paste"], mask=url))))
    return tmp


# --- items 10 and 11: one line per bad value ------------------------------------------------------

BAD = [  # (extra arguments, words the one-line error must hold)
    (["--preserve", "-1"], "--preserve must lie in [0, 1000]"),
    (["--preserve", "nan"], "--preserve must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--eig-floor", "nan"], "--eig-floor must be a finite number"),
    (["--eig-floor", "-1"], "--eig-floor must lie in [0, 1)"),
    (["--ridge", "-1"], "--ridge must lie in [0, 100]"),
    (["--steps", "1000000000000"], "--steps must lie in [0, 20000]"),
    (["--num-samples", "1000000000"], "--num-samples must lie in [1, 100000]"),
    (["--scale", "0"], "--scale: 0 is out of range"),
    (["--heat-direction", "5"], "--heat-direction 5 is out of range"),
    (["--heat-direction", "-1"], "--heat-direction must lie in [0, 255]"),
    (["--seeds=-1,2"], "cannot read seeds '-1'"),
    (["--seed", "-5"], "--seed: -5 is out of range"),
    (["--steps", "abc"], "invalid int value"),
    (["--device", "cuda:7"], "is not available"),
    (["--device", "foo"], "unknown device 'foo'"),
]


@pytest.mark.parametrize("extra, words", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_apply_arguments_give_one_line_and_touch_nothing(work, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    rc, err = run_main(capsys, "apply", str(work / "edit.json"), "--model", "tiny", "--cache-dir", str(work / "cache"), "--quiet",
                  "--out", str(out), *extra)
    assert rc == 2 and "\n" not in err and err.startswith("error: ") and words in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["sample", "--model", "tiny", "--per-row", "0"], "--per-row: 0 is out of range"),
    (["search", "{edit}", "--model", "tiny", "--top", "0"], "--top: 0 is out of range"),
    (["search", "{edit}", "--model", "tiny", "--top", "-3"], "--top: -3 is out of range"),
    (["serve", "--model", "tiny", "--port", "70000"], "--port: 70000 is out of range"),
    (["apply", "{work}/bigseed.json", "--model", "tiny"], "paste.seed must be a non-negative integer (0 to 2147483647)"),
    (["apply", "{work}/ctxdict.json", "--model", "tiny"], "'context' must be a list of selections"),
    (["apply", "{work}/bad.json", "--model", "tiny"], "UpdateConfig.steps must be int"),
    (["apply", "{work}/bomb.json", "--model", "tiny"], "paste: mask is 20000x20000 pixels, over the limit of 32x32"),
    (["layers", "--model", "tiny", "--device", "cuda"], "not available"),
    (["suggest", "{edit}", "--model", "tiny", "--ranks", "0,1"], "--ranks must name ranks from 1"),
])
def test_other_bad_values_give_one_line(work, tmp_path, capsys, args, words):
    args = [a.format(edit=work / "edit.json", work=work) for a in args]
    if args[0] in ("apply", "search", "suggest"):
        args += ["--out", str(tmp_path / "out"), "--cache-dir", str(work / "cache")]
    if args[0] == "sample":
        args += ["--out", str(tmp_path / "s.png")]
    rc, err = run_main(capsys, *args)
    assert rc == 2 and "\n" not in err and words in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.png").exists()


def test_an_edit_for_another_model_is_named_before_any_work(work, tmp_path, capsys):
    """Item 12: the message names the edit's model and the loaded one, and no statistics are collected first."""
    data = json.loads((work / "edit.json").read_text())
    (tmp_path / "faces.json").write_text(json.dumps(dict(data, model="faces", fingerprint="73be00128f1f97c3")))
    rc, err = run_main(capsys, "apply", str(tmp_path / "faces.json"), "--model", "tiny", "--cache-dir",
                       str(tmp_path / "fresh"), "--out", str(tmp_path / "out"))
    assert rc == 2 and "\n" not in err, err
    assert "made for model 'faces'" in err and "the loaded model 'tiny'" in err and "--model faces" in err
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "out").exists()


def test_a_user_sees_one_line_and_no_traceback(work, tmp_path):
    """The same, through a fresh process: stderr is exactly the one line (no warnings, no traceback)."""
    for args in (["apply", str(work / "edit.json"), "--model", "tiny", "--out", str(tmp_path / "o"), "--lr", "inf"],
                 ["serve", "--model", "tiny", "--port", "70000"]):
        rc, err = cli(*args)
        assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err


# --- item 8: the output folder ------------------------------------------------------------------

def apply_args(work: Path, out: Path, *edits: Path) -> list[str]:
    return ["apply", *map(str, edits or (work / "edit.json",)), "--model", "tiny", "--cache-dir", str(work / "cache"),
            "--samples", "2", "--num-samples", "50", "--quiet", "--out", str(out)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_a_failed_apply_leaves_the_earlier_output_as_it_was(work, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *apply_args(work, out))[0] == 0
    before = snapshot(out)
    assert set(before) == {"edit.json", "edit.safetensors", "grid.png", "model.safetensors", "report.json"}
    rc, err = run_main(capsys, *apply_args(work, out, work / "edit.json", work / "bad.json"))
    assert rc == 2 and "steps must be int" in err
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_apply_never_overwrites_its_input_or_a_foreign_folder(work, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(capsys, *apply_args(work, out))[0] == 0
    before = snapshot(out)
    rc, err = run_main(capsys, *apply_args(work, out, out / "edit.json"))
    assert rc == 2 and "holds the input" in err and "\n" not in err
    assert snapshot(out) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, err = run_main(capsys, *apply_args(work, mine))
    assert rc == 2 and "is not an earlier output of model-rewrite" in err
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_second_apply_replaces_the_whole_folder(work, tmp_path, capsys):
    """Files of the earlier run that this run does not write do not survive beside the new ones."""
    out = tmp_path / "out"
    other = tmp_path / "other.json"
    other.write_bytes((work / "edit.json").read_bytes())
    assert run_main(capsys, *apply_args(work, out, work / "edit.json", other))[0] == 0
    assert {"edit-grid.png", "other-grid.png"} <= set(snapshot(out))
    assert run_main(capsys, *apply_args(work, out))[0] == 0
    assert set(snapshot(out)) == {"edit.json", "edit.safetensors", "grid.png", "model.safetensors", "report.json"}


KILL_AT = """
import os, signal, sys, importlib
module, name = sys.argv[1].rsplit(".", 1)
target = importlib.import_module(module)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(target, name, die)
from model_rewrite.cli import main
main(sys.argv[2:])
"""


def kill_at(point: str, args: list[str]) -> int:
    """Run the command in a process that SIGKILLs itself when it reaches `point` (module.function); its exit status."""
    return subprocess.run([sys.executable, "-c", KILL_AT, point, *args], env=ENV, capture_output=True).returncode


def test_kill_during_apply_leaves_the_old_folder_or_the_new_one(work, tmp_path):
    out = tmp_path / "out"
    assert cli(*apply_args(work, out))[0] == 0
    old = snapshot(out)
    rerun = [*apply_args(work, out), "--resolve", "--seeds", "1002,1003"]
    # killed after the edit and its grid were written, before the weights and the report (where the mix was)
    assert kill_at("model_rewrite.export.export_model", rerun) == -9
    assert snapshot(out) == old
    assert kill_at("model_rewrite.outdir.swap_in", rerun) == -9  # everything written, not yet swapped in
    assert snapshot(out) == old
    assert kill_at("shutil.rmtree", rerun) == -9  # swapped in (outdir.staged_folder), the old folder not yet removed
    new = snapshot(out)
    assert set(new) == set(old) and new != old
    assert json.loads(new["report.json"])["heldout_seeds"] == [1002, 1003]  # the first run's were 1000, 1001
    assert json.loads(new["edit.json"])["factors_sha256"] == hashlib.sha256(new["edit.safetensors"]).hexdigest()


def test_kill_during_export_leaves_the_old_file_or_the_new_one(tmp_path):
    """A ProGAN file exported in its own format: the file and its sidecar are the old pair or the new pair."""
    from export_checks import random_delta
    from test_progan import progan_state_dict

    torch.save(progan_state_dict([32, 32, 32, 16]), tmp_path / "p.pth")
    model = f"progan:{tmp_path / 'p.pth'}"
    rw = Rewriter(model, cache_dir=tmp_path / "cache")
    layer = rw.layers()[-2].name
    m = box_mask(rw.info.resolution, 4, 12, 4, 12)
    spec = rw.new_edit(layer, paste=Selection(1, m), copy=Selection(2, m), context=[Selection(1, m)])
    for name, seed in (("a", 1), ("b", 2)):
        save_edit(tmp_path / f"{name}.json", spec, random_delta(rw, layer, seed=seed))
    out = tmp_path / "m.pth"
    args = ["--model", model, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]

    def pair() -> tuple[bytes, dict]:
        data, side = out.read_bytes(), json.loads((tmp_path / "m.pth.edits.json").read_text())
        assert side["file_sha256"] == hashlib.sha256(data).hexdigest()  # a pair, never a mix
        return data, side

    assert cli("export", str(tmp_path / "a.json"), *args)[0] == 0
    old = pair()
    assert old[1]["edits"] == [str(tmp_path / "a.json")]
    for point in ("model_rewrite.export.check_export", "model_rewrite.models.formats.progan.write_torch_checkpoint",
                  "model_rewrite.export.sha256_file"):  # writing, checking, describing: nothing published yet
        assert kill_at(point, ["export", str(tmp_path / "b.json"), *args]) == -9
        assert pair() == old
    assert cli("export", str(tmp_path / "b.json"), *args)[0] == 0
    assert pair()[1]["edits"] == [str(tmp_path / "b.json")]


def test_a_concurrent_writer_cannot_disturb_the_export_check(tmp_path, monkeypatch):
    """Item 15: the check reads the staged file, not PATH, so another process writing PATH between the write
    and the check (the old check's rare exit 1) changes nothing; the file published is this run's."""
    import model_rewrite.export as export
    from export_checks import random_delta

    rw = Rewriter("tiny", cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b16", seed=1), "ours")
    other = Rewriter("tiny", cache_dir=tmp_path / "cache")
    other.stack.push(random_delta(other, "b16", seed=2), "theirs")
    out = tmp_path / "m.safetensors"
    real = export.check_export

    def meanwhile(model, result, latents, info=None):  # another export to the same PATH lands now
        export.export_model(other.model, other.info, out)
        return real(model, result, latents, info)

    monkeypatch.setattr(export, "check_export", meanwhile)
    result = export.export_edited(rw.model, rw.info, out, check_latents=rw.latents([0, 1]))
    assert result.max_difference == 0.0
    assert torch.equal(Rewriter(str(out)).sample([0, 1]), rw.sample([0, 1]))
