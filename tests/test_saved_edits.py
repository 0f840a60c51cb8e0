"""Saved edits as one unit (issue 10, items 4-6): a failed save leaves the saved edit as it was, a JSON is
never read with another save's factors, the Load list survives broken entries, and names are matched whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the [web] extra (fastapi, uvicorn)")
from helpers import box_mask
from web_fixtures import JSON, client, session, stats_cache  # noqa: F401  (fixtures)

from model_rewrite import Rewriter, Selection, UpdateConfig, load_edit, save_edit
from model_rewrite.cache import save_tensors
from model_rewrite.errors import IncompatibleEdit, InvalidEdit
from model_rewrite.server.session import EditSession
from model_rewrite.server.storage import check_save_name

RES, LAYER = 32, "b16"


def apply_edit(rw: Rewriter, y: int, name: str):
    """Apply a closed-form edit whose paste box starts at row `y` (different y: different factors)."""
    m = box_mask(RES, y, y + 8, 8, 16)
    spec = rw.new_edit(LAYER, paste=Selection(1, m), copy=Selection(2, box_mask(RES, 4, 12, 4, 12)),
                       update=UpdateConfig(method="closed_form"), name=name)
    return rw.apply(spec)


def saved(session: EditSession, name: str):
    spec, delta = load_edit(session.edits_dir / f"{name}.json")
    return spec, delta


# --- item 4: one atomic unit ----------------------------------------------------------------------

def test_a_failed_json_write_leaves_the_saved_edit_as_it_was(client, session, monkeypatch):
    first = apply_edit(session.rw, 8, "first")
    assert client.post("/api/edits", json={"name": "NAME"}).status_code == 201
    before = {p.name: p.read_bytes() for p in session.edits_dir.iterdir()}
    apply_edit(session.rw, 16, "second")
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("NAME.json"):
            raise PermissionError(1, "Operation not permitted", str(dst))
        return real(src, dst)

    import model_rewrite.edits as edits

    monkeypatch.setattr(edits.os, "replace", failing)
    r = client.post("/api/edits", json={"name": "NAME", "overwrite": True})
    assert r.status_code == 500 and "unchanged" in r.json()["detail"], r.text
    monkeypatch.setattr(edits.os, "replace", real)
    assert {p.name: p.read_bytes() for p in session.edits_dir.iterdir()} == before  # no temporaries either
    spec, delta = saved(session, "NAME")
    assert spec.name == "first" and torch.equal(delta.factor, first.delta.factor)


def chattr_works(path: Path) -> bool:
    if shutil.which("chattr") is None or os.geteuid() != 0:
        return False
    path.write_text("{}")
    ok = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.unlink()
    return ok


def test_saving_over_an_immutable_json_leaves_the_pair_as_it_was(client, session, tmp_path):
    """The issue's case, with a real immutable file (chattr +i: needs root on a filesystem that has it)."""
    if not chattr_works(tmp_path / "probe"):
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs/btrfs)")
    first = apply_edit(session.rw, 8, "first")
    assert client.post("/api/edits", json={"name": "NAME"}).status_code == 201
    path = session.edits_dir / "NAME.json"
    before = {p.name: p.read_bytes() for p in session.edits_dir.iterdir()}
    apply_edit(session.rw, 16, "second")
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        r = client.post("/api/edits", json={"name": "NAME", "overwrite": True})
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert r.status_code == 500 and "NAME" in r.json()["detail"]
    assert {p.name: p.read_bytes() for p in session.edits_dir.iterdir()} == before
    r = client.post("/api/edits/NAME/load", json={"apply": True, "again": True})  # "first" is applied already
    assert r.status_code == 200 and r.json()["edit"]["name"] in ("first", "first (2)")  # history names are unique
    assert torch.equal(session.rw.stack.entries[-1].delta.factor, first.delta.factor)


def test_a_json_is_never_read_with_another_saves_factors(session, tmp_path):
    a = apply_edit(session.rw, 8, "a")
    b = apply_edit(session.rw, 16, "b")
    save_edit(tmp_path / "a.json", a.spec, a.delta)
    save_edit(tmp_path / "b.json", b.spec, b.delta)
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "a.safetensors")  # what an interrupted save used to leave
    with pytest.raises(IncompatibleEdit, match="is not the factors file saved with a.json"):
        load_edit(tmp_path / "a.json")
    # a file written before the checksum existed still reads its factors
    data = json.loads((tmp_path / "b.json").read_text())
    assert data.pop("factors_sha256") is not None
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert torch.equal(load_edit(tmp_path / "b.json")[1].factor, b.delta.factor)
    # a draft says it has no factors: a factors file beside it is never read, and saving one removes it
    save_edit(tmp_path / "a.json", a.spec)
    assert not (tmp_path / "a.safetensors").exists()
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    assert load_edit(tmp_path / "a.json")[1] is None
    # only the JSON (a downloaded file): solved again when loaded
    save_edit(tmp_path / "c.json", a.spec, a.delta)
    (tmp_path / "c.safetensors").unlink()
    assert load_edit(tmp_path / "c.json")[1] is None


def test_written_json_never_holds_non_finite_numbers(session, tmp_path):
    import dataclasses
    import math

    from model_rewrite.cache import json_bytes

    def refuse(name):
        raise AssertionError(f"non-finite number {name} in the file")

    a = apply_edit(session.rw, 8, "a")
    for bad in (math.nan, math.inf, -math.inf):  # the configs refuse them, so an edit file cannot hold one
        with pytest.raises(InvalidEdit, match="finite"):
            dataclasses.replace(a.spec.update, preserve=bad)
    save_edit(tmp_path / "a.json", a.spec, a.delta)
    json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse)
    # reports may measure NaN (0/0): they are written as null, never as bare NaN
    assert json.loads(json_bytes({"ratio": math.nan, "x": [math.inf, 1.5]}), parse_constant=refuse) == \
        {"ratio": None, "x": [None, 1.5]}


# --- item 5: the Load list survives broken entries ------------------------------------------------

def test_broken_entries_are_listed_as_unreadable_and_hide_nothing(client, session):
    apply_edit(session.rw, 8, "good")
    assert client.post("/api/edits", json={"name": "good"}).status_code == 201
    assert client.post("/api/edits", json={"name": "nofactor"}).status_code == 201
    folder = session.edits_dir
    save_tensors(folder / "nofactor.safetensors", {"dirs": torch.zeros(1, 4)}, {"fingerprint": "x"})
    data = json.loads((folder / "nofactor.json").read_text())
    data.pop("factors_sha256")  # as an older file: its factors are read
    (folder / "nofactor.json").write_text(json.dumps(data))
    (folder / "x.json").mkdir()
    (folder / "notjson.json").write_text("{")
    (folder / "nopath.json").write_text((folder / "good.json").read_text().replace('"factors_sha256"', '"factors_x"'))
    r = client.get("/api/edits")
    assert r.status_code == 200, r.text
    items = {e["name"]: e for e in r.json()["edits"]}
    assert set(items) == {"good", "nofactor", "x", "notjson", "nopath"}
    assert items["good"]["readable"] and items["good"]["compatible"]
    for name, words in (("x", "not a file"), ("notjson", "not valid JSON"), ("nopath", "unknown key")):
        assert not items[name]["readable"] and not items[name]["compatible"] and words in items[name]["error"], items[name]
    assert not items["nofactor"]["compatible"] and items["nofactor"]["error"]
    for name in ("x", "notjson"):
        assert client.post(f"/api/edits/{name}/load", json={}).status_code == 400


def test_a_factors_file_without_its_fields_is_a_clear_error(tmp_path, session):
    a = apply_edit(session.rw, 8, "a")
    save_edit(tmp_path / "a.json", a.spec)
    data = json.loads((tmp_path / "a.json").read_text())
    data.pop("factors_sha256")
    (tmp_path / "a.json").write_text(json.dumps(data))
    meta = {"fingerprint": a.spec.fingerprint, "layer": a.spec.layer}
    for tensors, extra, words in (({"dirs": torch.zeros(1, 4)}, {"param_path": "x", "key_axis": 1}, "no 'factor'"),
                                  ({"factor": torch.zeros(1, 4), "dirs": torch.zeros(1, 4)}, {"key_axis": 1}, "no 'param_path'"),
                                  ({"factor": torch.zeros(1, 4), "dirs": torch.zeros(1, 4)}, {"param_path": "x"}, "key_axis")):
        save_tensors(tmp_path / "a.safetensors", tensors, {**meta, **extra})
        with pytest.raises(InvalidEdit, match=words):
            load_edit(tmp_path / "a.json")


# --- item 6: names are matched whole --------------------------------------------------------------

@pytest.mark.parametrize("name", ["abc\n", "abc\n.json", "abc\r", "abc\x00", "\nabc", "ab c"])
def test_names_with_control_characters_are_refused(client, session, name):
    with pytest.raises(InvalidEdit, match="invalid edit name"):
        check_save_name(name)
    apply_edit(session.rw, 8, "a")
    r = client.post("/api/edits", json={"name": name})
    assert r.status_code == 400 and "invalid edit name" in r.json()["detail"]
    assert not session.edits_dir.exists() or list(session.edits_dir.iterdir()) == []
