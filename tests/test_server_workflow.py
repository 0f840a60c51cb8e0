"""The web API's second pass (issue 12) on the tiny model: live preview, the context's singular values, search
results with where they fire, a match threshold that does not depend on the images shown, duplicate edits and
unique names, saving and loading the whole stack (read by `model-rewrite apply` too), and the input bounds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the [web] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

from test_server import (COPY, LAYER, PASTE, RES, assert_error, client, edit_body, png_of, run_edit,  # noqa: F401
                         sel, session, stats_cache, wait_job)

from model_rewrite.config import KeyConfig, UpdateConfig
from model_rewrite.edit_stack import STACK_FORMAT, load_edit_stack, read_edits
from model_rewrite.edits import Selection
from model_rewrite.render import to_uint8
from model_rewrite.search import fire_threshold
from model_rewrite.server.context import REFERENCE_SEEDS


def test_info_gives_the_bounds_of_the_page_inputs_from_the_configs(client):
    info = client.get("/api/info").json()
    assert info["bounds"]["keys"]["rank"] == {"ge": 1, "le": 256}
    assert info["bounds"]["update"]["steps"] == {"ge": 0, "le": 20_000}
    assert info["bounds"]["update"]["lr"] == {"gt": 0.0, "le": 10.0}
    assert info["max_gallery"] == 4096 and info["max_search"] == 2000 and info["match_reference"] == list(REFERENCE_SEEDS)
    assert re.fullmatch(info["name_pattern"], "my-edit_1.v2") and not re.fullmatch(info["name_pattern"], "../x")
    # the same bounds are enforced by the API and by the configs
    assert_error(client.post("/api/execute", json=edit_body(steps=20_001)), 400, "update.steps")
    assert_error(client.post("/api/execute", json={**edit_body(), "keys": {"rank": 257}}), 400, "keys.rank")
    with pytest.raises(Exception, match="steps"):
        UpdateConfig(steps=20_001)
    with pytest.raises(Exception, match="rank"):
        KeyConfig(rank=257)
    # a gallery of more than max_gallery images is refused (it would make thousands of pages)
    assert_error(client.get("/api/gallery", params={"seeds": "0-99999"}), 400, "more than 4096")
    assert client.get("/api/gallery", params={"seeds": "0-4095"}).json()["pages"] == 256


def test_live_preview_shows_the_closed_form_edit_and_leaves_the_stack_alone(client, session):
    run_edit(client)  # an applied edit, undone: the redo list must survive a live preview
    client.post("/api/history/undo")
    state, weight = session.state(), session.rw.model.b16.conv.weight.detach().clone()
    body = edit_body()
    body["context"] = [sel(2, PASTE)]
    r = client.post("/api/live", json={"edit": body, "seeds": [1, 2, 3, 4]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [im["seed"] for im in out["images"]] == [1, 2, 3, 4] and out["layer"] == LAYER and out["seconds"] > 0
    h = client.get("/api/history").json()
    assert h["entries"] == [] and [e["id"] for e in h["undone"]] == [1] and session.state() == state
    assert torch.equal(session.rw.model.b16.conv.weight, weight)
    # a redo after the preview brings back the undone edit, numbered as before
    r = client.post("/api/history/redo")
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()["entries"]] == [1]
    assert out["note"] == ""  # nothing was applied then
    # with the edit applied, the preview of a draft with its context says what Execute would warn about
    again = client.post("/api/live", json={"edit": edit_body() | {"name": "draft"}, "seeds": [1]}).json()
    assert again["note"].startswith("overlap: 'test edit' and 'draft' respond to the same keys") and "(overlap 1.00" in again["note"]
    assert [e["id"] for e in client.get("/api/history").json()["entries"]] == [1]
    client.post("/api/history/undo")
    # the same images as solving the edit in closed form and applying it
    rw = session.rw
    spec = rw.new_edit(LAYER, paste=Selection(1, PASTE), copy=Selection(0, COPY), context=[Selection(2, PASTE)],
                       update=UpdateConfig(method="closed_form", steps=20))
    entry = rw.apply(spec)
    want = to_uint8(rw.sample([1, 2, 3, 4]))
    rw.stack.remove(entry.id)
    got = np.stack([png_of(im["image"])[..., :3] for im in out["images"]])
    assert np.array_equal(got, want)
    assert not np.array_equal(got[0], to_uint8(rw.sample([1]))[0]), "the paste image changes"
    assert_error(client.post("/api/live", json={"edit": {**body, "layer": "nope"}, "seeds": [1]}), 400, "nope")
    assert_error(client.post("/api/live", json={"edit": body, "seeds": list(range(65))}), 400, "seeds")


def test_spectrum_counts_the_directions_a_context_spans(client, session):
    one = client.post("/api/spectrum", json={"layer": LAYER, "context": [sel(1, PASTE)]}).json()
    assert one["values"][0] == pytest.approx(1.0) and all(a >= b for a, b in zip(one["values"], one["values"][1:]))
    assert one["keys"] == 4 and one["rank"] == 1 and 1 <= one["directions"] <= len(one["values"])  # 2x2 cells of 8x8 keys
    # against an independent computation: whitened, weighted keys under the mask, singular values
    rw = session.rw
    spec = rw.spec(LAYER)
    obs = rw.observe(spec, 1)
    k = obs.keys[0].flatten(1).T.double()  # (Hk*Wk, C)
    cell = RES // obs.keys.shape[-1]
    w = PASTE.reshape(obs.keys.shape[-1], cell, obs.keys.shape[-1], cell).mean((1, 3)).flatten().double()
    c = rw.stats(LAYER).moment.double()
    evals, evecs = torch.linalg.eigh(c)
    z = evecs @ torch.diag(evals.clamp_min(1e-6 * evals.max()).rsqrt()) @ evecs.T
    s = torch.linalg.svdvals((k[w > 0] @ z) * w[w > 0, None])
    assert one["values"] == pytest.approx((s / s[0]).tolist()[:16], rel=1e-4, abs=1e-6)
    two = client.post("/api/spectrum", json={"layer": LAYER, "context": [sel(1, PASTE), sel(2, COPY)],
                                             "keys": {"rank": 2}}).json()
    assert two["keys"] == 8 and two["rank"] == 2
    assert_error(client.post("/api/spectrum", json={"layer": LAYER, "context": []}), 400, "context")


def test_the_match_threshold_does_not_depend_on_the_images_shown(client, session):
    ctx = {"layer": LAYER, "context": [sel(1, PASTE)]}
    wide = client.post("/api/matches", json={**ctx, "seeds": list(range(64)), "quantile": 0.98}).json()
    few = client.post("/api/matches", json={**ctx, "seeds": [3, 7], "quantile": 0.98}).json()
    found = client.post("/api/search", json={**ctx, "seeds": "100-299", "top_k": 12, "quantile": 0.98}).json()
    assert wide["threshold"] == few["threshold"] == found["threshold"]
    # the quantile of the heat on the fixed reference images
    rw = session.rw
    dirs = rw.directions(LAYER, [Selection(1, PASTE)])
    assert wide["threshold"] == pytest.approx(fire_threshold(rw.heat(LAYER, dirs, list(REFERENCE_SEEDS)), 0.98), rel=1e-6)
    lower = client.post("/api/matches", json={**ctx, "seeds": [3, 7], "quantile": 0.9}).json()
    assert lower["threshold"] < few["threshold"]


def test_search_results_show_where_they_fire_and_give_a_context_mask(client, session):
    ctx = {"layer": LAYER, "context": [sel(1, PASTE)]}
    out = client.post("/api/search", json={**ctx, "seeds": "0-99", "top_k": 5}).json()
    assert len(out["matches"]) == 5 and out["searched"] == 100 and out["quantile"] == 0.98
    scores = [m["score"] for m in out["matches"]]
    assert scores == sorted(scores, reverse=True)
    rw = session.rw
    dirs = rw.directions(LAYER, [Selection(1, PASTE)])
    for m in out["matches"]:
        heat = rw.heat(LAYER, dirs, [m["seed"]])[0]
        assert m["score"] == pytest.approx(float(heat.max()), rel=1e-5)
        fires = heat > out["threshold"]
        assert m["fraction"] == pytest.approx(float(fires.float().mean()))
        mask = png_of(m["mask"])  # the firing cells at image resolution, white
        cell = RES // heat.shape[-1]
        assert np.array_equal(mask > 127, fires.numpy().repeat(cell, 0).repeat(cell, 1))
        overlay = png_of(m["overlay"])[..., :3]
        image = to_uint8(rw.sample([m["seed"]]))[0]
        inside = mask > 127
        assert inside.any() == (m["fraction"] > 0)
        assert (overlay[~inside] <= image[~inside]).all(), "outside the firing region the image is dimmed"
    # a match's mask is a valid context selection: searching by it works
    first = out["matches"][0]
    r = client.post("/api/search", json={"layer": LAYER, "context": [{"seed": first["seed"], "mask": first["mask"]}],
                                         "seeds": "0-20", "top_k": 3})
    assert r.status_code == 200 and len(r.json()["matches"]) == 3


def test_executing_or_loading_the_same_edit_twice_asks_first_and_names_stay_unique(client, session):
    run_edit(client)
    r = client.post("/api/execute", json=edit_body())
    assert_error(r, 409, "applied already", "test edit")
    assert r.json()["code"] == "duplicate"
    assert len(client.get("/api/history").json()["entries"]) == 1
    r = client.post("/api/execute", params={"again": "true"}, json=edit_body())
    assert r.status_code == 202
    assert wait_job(client)["state"] == "done"
    other = edit_body(steps=5)  # another edit under the same name
    assert client.post("/api/execute", json=other).status_code == 202
    wait_job(client)
    names = [e["name"] for e in client.get("/api/history").json()["entries"]]
    assert names == ["test edit", "test edit (2)", "test edit (3)"]
    # loading a saved edit that is applied already asks too
    assert client.post("/api/edits", json={"name": "dup"}).status_code == 201
    assert_error(client.post("/api/edits/dup/load", json={}), 409, "applied already")
    r = client.post("/api/edits/dup/load", json={"again": True})
    assert r.status_code == 200 and r.json()["entry"]["name"] == "test edit (4)"


def test_the_whole_stack_saves_as_one_file_and_loads_back_with_the_same_images(client, session):
    run_edit(client)
    second = edit_body(steps=10)
    second.update(name="second", copy=sel(3, COPY), paste=sel(4, PASTE), context=[sel(4, PASTE)])
    run_edit(client, second)
    edited = to_uint8(session.rw.sample(list(range(8))))
    r = client.post("/api/edits", json={"name": "both", "stack": True})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert (saved["kind"], saved["count"], saved["has_factors"], saved["layer"]) == ("stack", 2, True, LAYER)
    path = session.edits_dir / "both.json"
    data = json.loads(path.read_text())
    assert data["format"] == STACK_FORMAT and data["version"] == 1 and [e["name"] for e in data["edits"]] == ["test edit", "second"]
    listed = {e["name"]: e for e in client.get("/api/edits").json()["edits"]}
    assert listed["both"]["kind"] == "stack" and listed["both"]["compatible"]
    detail = client.get("/api/edits/both").json()
    assert detail["count"] == 2 and detail["edit"]["name"] == "second" and len(detail["edits"]) == 2
    assert_error(client.post("/api/edits", json={"name": "both", "stack": True}), 409, "exists already")
    client.post("/api/history/revert")
    r = client.post("/api/edits/both/load", json={})
    assert r.status_code == 200 and r.json()["job"] is None and r.json()["count"] == 2
    assert [e["name"] for e in r.json()["entries"]] == ["test edit", "second"]
    assert np.array_equal(to_uint8(session.rw.sample(list(range(8)))), edited)
    # without factors (an imported stack), loading solves them in order in one job
    client.post("/api/history/revert")
    r = client.post("/api/edits/import", json={"name": "both-draft", "edit": data})
    assert r.status_code == 201 and r.json()["kind"] == "stack" and not r.json()["has_factors"]
    r = client.post("/api/edits/both-draft/load", json={})
    assert r.json()["job"] is not None
    job = wait_job(client)
    assert job["state"] == "done" and job["report"] is not None
    assert [e["name"] for e in client.get("/api/history").json()["entries"]] == ["test edit", "second"]
    assert np.array_equal(to_uint8(session.rw.sample(list(range(8)))), edited)
    client.post("/api/history/revert")
    assert_error(client.post("/api/edits", json={"name": "empty", "stack": True}), 404, "nothing to save")


def test_a_stack_load_that_is_cancelled_leaves_the_model_as_it_was(client, session):
    first = edit_body(steps=10)
    run_edit(client, first)
    client.post("/api/edits", json={"name": "one", "stack": True})
    spec = json.loads((session.edits_dir / "one.json").read_text())
    spec["edits"].append(dict(spec["edits"][0], name="slow", update=dict(spec["edits"][0]["update"], steps=10_000)))
    client.post("/api/history/revert")
    client.post("/api/edits/import", json={"name": "slow-stack", "edit": spec})
    weight = session.rw.model.b16.conv.weight.detach().clone()
    job = client.post("/api/edits/slow-stack/load", json={}).json()["job"]
    assert job is not None
    while client.get("/api/job").json()["job"]["step"] < 2:
        pass
    client.post("/api/job/cancel")
    assert wait_job(client)["state"] == "cancelled"
    assert client.get("/api/history").json()["entries"] == []
    assert torch.equal(session.rw.model.b16.conv.weight, weight)


def test_model_rewrite_apply_reads_a_saved_stack(client, session, stats_cache, tmp_path):
    from model_rewrite.cli import main

    run_edit(client)
    second = edit_body(steps=10)
    second.update(name="second", copy=sel(3, COPY), paste=sel(4, PASTE), context=[sel(4, PASTE)])
    run_edit(client, second)
    want = to_uint8(session.rw.sample([1000, 1001]))
    client.post("/api/edits", json={"name": "stack", "stack": True})
    path = session.edits_dir / "stack.json"
    assert [s.name for s, d in read_edits(path)] == ["test edit", "second"]
    assert all(d is not None for _, d in load_edit_stack(path))
    out = tmp_path / "out"
    assert main(["apply", str(path), "--model", "tiny", "--cache-dir", str(stats_cache), "--out", str(out),
                 "--seed", "1000", "--samples", "2", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["edit"].rsplit("/", 1)[-1] for e in report["edits"]] == ["stack-1.json", "stack-2.json"]
    assert all(e["reused_factors"] for e in report["edits"])
    from model_rewrite.models import load_generator
    from model_rewrite.render import generate
    from model_rewrite.latents import latents_from_seeds

    model, info = load_generator(str(out / "model.safetensors"))
    assert np.array_equal(to_uint8(generate(model, latents_from_seeds([1000, 1001], info.latent_shape))), want)
