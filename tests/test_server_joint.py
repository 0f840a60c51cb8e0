"""The web app solving applied edits together (POST /api/history/joint) and saving, importing and loading rules
solved together (multi-edit files), on the tiny model through FastAPI's test client."""

from __future__ import annotations

import json
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the [web] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from helpers import box_mask
from test_server import COPY, RES, assert_error, edit_body, run_edit, sel, wait_job
from web_fixtures import client, session, stats_cache  # noqa: F401  (fixtures)

from model_rewrite import Rewriter
from model_rewrite.cache import load_tensors
from model_rewrite.edits import EditSpec
from model_rewrite.joint import edit_content
from model_rewrite.multiedit import load_multi_edit

OTHER_PASTE = box_mask(RES, 2, 10, 18, 26)


def two_edits_and_one_upstream(client) -> list[dict]:
    """Three applied edits: 'first' and 'second' at b16 (one context, so they overlap), 'up' at b8 in between."""
    first = edit_body(lr=1e-3) | {"name": "first"}
    up = edit_body(lr=1e-3) | {"name": "up", "layer": "b8"}
    second = edit_body(lr=1e-3) | {"name": "second", "copy": sel(3, COPY), "paste": sel(2, OTHER_PASTE)}
    jobs = [run_edit(client, b) for b in (first, up, second)]
    assert "respond to the same keys" in jobs[2]["note"]  # the warning that invites solving them together
    return jobs


def solve_after_the_cancel(session, monkeypatch) -> None:
    """The session's joint solves start once the running job's cancel is in: their first step stops them."""
    solve_many = session.rw.solve_many

    def after_cancel(specs, on_step=None):
        while not session.job.cancel.is_set():
            time.sleep(0.01)
        return solve_many(specs, on_step)

    monkeypatch.setattr(session.rw, "solve_many", after_cancel)


def weight(session_or_rewriter, layer: str = "b16") -> torch.Tensor:
    rw = getattr(session_or_rewriter, "rw", session_or_rewriter)
    return getattr(rw.model, layer).conv.weight.detach().clone()


def test_solving_the_edits_at_a_layer_together_replaces_them_with_one_joint_edit(client, session, stats_cache):
    two_edits_and_one_upstream(client)
    stacked = {e["name"]: e for e in client.get("/api/history").json()["entries"]}
    w8 = weight(session, "b8")
    r = client.post("/api/history/joint", json={"layer": "b16"})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "joint" and r.json()["name"] == "first + second"
    job = wait_job(client)
    assert job["state"] == "done", job

    # the history: the upstream edit stays; the two b16 edits became one entry, in the place of the last
    h = client.get("/api/history").json()
    assert [e["name"] for e in h["entries"]] == ["up", "joint: first + second"]
    joint = h["entries"][1]
    assert joint["id"] == job["entry_id"] and joint["layer"] == "b16" and joint["members"] == ["first", "second"]
    # one context for both rules: one direction, so the joint change has rank 1 (the sum of ranks, made independent)
    assert joint["edit"] is None and joint["rank"] == 1 and h["undone"] == []
    assert joint["member_edits"] == [stacked["first"]["edit"], stacked["second"]["edit"]]  # each rule's regions
    assert h["entries"][0]["id"] == stacked["up"]["id"] and torch.equal(weight(session, "b8"), w8)

    # the weights: those of the library's joint solve of the two rules on a model with only 'up' applied
    # (solved here on a second Rewriter, from the specs the page sent)
    rw = Rewriter("tiny", cache_dir=stats_cache)
    w0 = weight(rw)
    up = session.rw.stack.entries[0]
    rw.apply(up.spec, up.delta)
    specs = [EditSpec.from_dict(stacked[n]["edit"]) for n in ("first", "second")]
    (result,) = rw.solve_many(specs)
    torch.testing.assert_close(weight(session), w0 + result.delta.dense(), rtol=0, atol=1e-6)

    # each rule measured inside it, and the overlap named as one solved together
    assert [rep["name"] for rep in job["reports"]] == ["first", "second"] and job["report"] is None
    assert all(rep["heldout_seeds"] == list(range(1000, 1016)) and rep["lines"] for rep in job["reports"])
    (line,) = job["note"].splitlines()
    assert line.startswith("overlap: 'first' and 'second'") and "solved together" in line

    # the exported model names the joint edit's rules in its metadata (the API's download)
    path = stats_cache.parent / "joint-export.safetensors"
    path.write_bytes(client.get("/api/export").content)
    exported = load_tensors(path)[1]["edits"]
    assert [e["name"] for e in exported] == ["up", "joint: first + second"]
    assert [m["name"] for m in exported[1]["members"]] == ["first", "second"]
    assert edit_content(EditSpec.from_dict(exported[1]["members"][1])) == edit_content(specs[1])

    # a rule inside the joint edit is applied already: executing it again is refused as a duplicate
    assert_error(client.post("/api/execute", json=edit_body(lr=1e-3) | {"name": "first again"}), 409,
                 "applied already", "joint: first + second")


def test_solving_together_refuses_what_cannot_be_solved_jointly(client, session):
    assert_error(client.post("/api/history/joint", json={"layer": "b16"}), 400, "two or more", "it has 0")
    run_edit(client, edit_body(lr=1e-3) | {"name": "first"})
    assert_error(client.post("/api/history/joint", json={"layer": "b16"}), 400, "two or more", "it has 1")
    assert_error(client.post("/api/history/joint", json={"layer": "nope"}), 400, "nope")
    run_edit(client, edit_body(lr=1e-3, steps=7) | {"name": "other steps", "copy": sel(3, COPY)})
    before = client.get("/api/history").json()
    assert_error(client.post("/api/history/joint", json={"layer": "b16"}), 400, "UpdateConfig.steps=7",
                 "share it")
    assert client.get("/api/history").json() == before  # nothing changed


def test_a_cancelled_joint_solve_leaves_the_history_as_it_was(client, session, monkeypatch):
    two_edits_and_one_upstream(client)
    before, w = client.get("/api/history").json(), weight(session)
    solve_after_the_cancel(session, monkeypatch)
    assert client.post("/api/history/joint", json={"layer": "b16"}).status_code == 202
    client.post("/api/job/cancel")
    assert wait_job(client)["state"] == "cancelled"
    assert client.get("/api/history").json() == before and torch.equal(weight(session), w)


def test_a_joint_edit_is_saved_with_its_factors_and_loads_to_the_same_weights(client, session):
    two_edits_and_one_upstream(client)
    client.post("/api/history/joint", json={"layer": "b16"})
    wait_job(client)
    solved = weight(session)
    # the whole stack cannot hold it (an edit-stack file has no joint entries): said, and nothing written
    assert_error(client.post("/api/edits", json={"name": "all", "stack": True}), 400, "solved together",
                 "save the last edit alone")
    assert not (session.edits_dir / "all.json").exists()
    r = client.post("/api/edits", json={"name": "both"})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["kind"] == "joint" and saved["count"] == 2 and saved["has_factors"] and saved["compatible"]
    data = json.loads((session.edits_dir / "both.json").read_text())
    assert data["format"] == "model-rewrite-multi-edit" and [m["name"] for m in data["members"]] == ["first", "second"]
    specs, groups = load_multi_edit(session.edits_dir / "both.json")  # the CLI's reader takes it as it is
    assert len(groups) == 1 and torch.equal(groups[0].delta.dense(), session.rw.stack.entries[-1].delta.dense())
    detail = client.get("/api/edits/both").json()
    assert detail["count"] == 2 and [e["name"] for e in detail["edits"]] == ["first", "second"]

    # remove the joint edit and load the file: one joint entry again, with the very same weights
    client.delete(f"/api/history/{session.rw.stack.entries[-1].id}")
    out = client.post("/api/edits/both/load", json={}).json()
    assert out["job"] is None and out["count"] == 2 and out["entry"]["members"] == ["first", "second"]
    assert torch.equal(weight(session), solved)
    assert_error(client.post("/api/edits/both/load", json={}), 409, "applied already")


def test_rules_imported_together_without_factors_are_solved_together_when_loaded(client, session, stats_cache):
    two_edits_and_one_upstream(client)
    client.post("/api/history/joint", json={"layer": "b16"})
    wait_job(client)
    client.post("/api/edits", json={"name": "both"})
    data = json.loads((session.edits_dir / "both.json").read_text())
    client.post("/api/history/revert")
    r = client.post("/api/edits/import", json={"name": "imported", "edit": data})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "joint" and not r.json()["has_factors"]
    out = client.post("/api/edits/imported/load", json={}).json()
    assert out["entry"] is None and out["job"]["kind"] == "load"
    job = wait_job(client)
    assert job["state"] == "done" and [rep["name"] for rep in job["reports"]] == ["first", "second"]
    (entry,) = client.get("/api/history").json()["entries"]
    assert entry["members"] == ["first", "second"]
    # solved on the model without 'up' (reverted), so not the saved factors: the library's solve of the same rules
    rw = Rewriter("tiny", cache_dir=stats_cache)
    (result,) = rw.solve_many([EditSpec.from_dict(m) for m in data["members"]])
    torch.testing.assert_close(session.rw.stack.entries[0].delta.dense(), result.delta.dense(), rtol=0, atol=1e-6)


def test_a_rule_taken_out_of_a_joint_edit_leaves_the_others_solved_together(client, session, stats_cache):
    two_edits_and_one_upstream(client)
    stacked = {e["name"]: e for e in client.get("/api/history").json()["entries"]}
    client.post("/api/history/joint", json={"layer": "b16"})
    wait_job(client)
    joint = client.get("/api/history").json()["entries"][1]
    assert_error(client.post(f"/api/history/{joint['id']}/take-out", json={"member": 2}), 400, "rules 0..1, not 2")
    assert_error(client.post(f"/api/history/{stacked['up']['id']}/take-out", json={"member": 0}), 400,
                 "not solved together", "remove it instead")
    assert_error(client.post("/api/history/999/take-out", json={"member": 0}), 404, "no applied edit has id 999")

    r = client.post(f"/api/history/{joint['id']}/take-out", json={"member": 0})  # 'first' out
    assert r.status_code == 202, r.text
    assert r.json()["job"]["kind"] == "joint" and r.json()["job"]["name"] == "second"
    job = wait_job(client)
    assert job["state"] == "done" and [rep["name"] for rep in job["reports"]] == ["second"]
    h = client.get("/api/history").json()
    assert [e["name"] for e in h["entries"]] == ["up", "joint: second"] and h["entries"][1]["members"] == ["second"]
    # the weights: 'second' solved (jointly, alone) on the model with only 'up' applied
    rw = Rewriter("tiny", cache_dir=stats_cache)
    w0 = weight(rw)
    up = session.rw.stack.entries[0]
    rw.apply(up.spec, up.delta)
    (result,) = rw.solve_many([EditSpec.from_dict(stacked["second"]["edit"])])
    torch.testing.assert_close(weight(session), w0 + result.delta.dense(), rtol=0, atol=1e-6)

    # its last rule: the edit is removed at once, no job
    out = client.post(f"/api/history/{h['entries'][1]['id']}/take-out", json={"member": 0}).json()
    assert out["job"] is None and [e["name"] for e in out["history"]["entries"]] == ["up"]
    assert torch.equal(weight(session), w0)


def test_a_cancelled_take_out_leaves_the_joint_edit_as_it_was(client, session, monkeypatch):
    two_edits_and_one_upstream(client)
    client.post("/api/history/joint", json={"layer": "b16"})
    wait_job(client)
    before, w = client.get("/api/history").json(), weight(session)
    solve_after_the_cancel(session, monkeypatch)
    assert client.post(f"/api/history/{before['entries'][1]['id']}/take-out", json={"member": 1}).status_code == 202
    client.post("/api/job/cancel")
    assert wait_job(client)["state"] == "cancelled"
    assert client.get("/api/history").json() == before and torch.equal(weight(session), w)


def test_an_edit_solved_together_counts_as_its_rules_when_solved_together_again(client, session):
    two_edits_and_one_upstream(client)
    client.post("/api/history/joint", json={"layer": "b16"})
    wait_job(client)
    third = edit_body(lr=1e-3) | {"name": "third", "copy": sel(4, COPY), "paste": sel(3, OTHER_PASTE),
                                   "context": [sel(3, OTHER_PASTE)]}
    run_edit(client, third)
    r = client.post("/api/history/joint", json={"layer": "b16"})
    assert r.status_code == 202 and r.json()["name"] == "first + second + third"
    job = wait_job(client)
    assert [rep["name"] for rep in job["reports"]] == ["first", "second", "third"]
    h = client.get("/api/history").json()
    assert [e["name"] for e in h["entries"]] == ["up", "joint: first + second + third"]
    assert h["entries"][1]["members"] == ["first", "second", "third"] and h["entries"][1]["rank"] == 2
