"""The web API on the tiny model, through FastAPI's test client: every endpoint, its errors and the busy answer."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the [web] extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

with warnings.catch_warnings():  # starlette's notice about httpx versions
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from helpers import box_mask, image_from_png, live_server
from web_fixtures import JSON, client, session  # noqa: F401  (fixtures; JSON: what the page sends with every change)

from model_rewrite import Rewriter
from model_rewrite.edits import Selection, load_edit
from model_rewrite.errors import InvalidEdit, SolveError
from model_rewrite.masks import data_url_from_mask
from model_rewrite.render import to_uint8
from model_rewrite.quality import quality_report
from model_rewrite.rewrite import LayerInfo
from model_rewrite.server.app import create_app
from model_rewrite.latents import parse_seeds as seeds_from_text
from model_rewrite.server.rendering import MATCH_COLOR
from model_rewrite.server.session import EditSession, default_layer
from model_rewrite.server.storage import check_save_name

RES = 32  # the tiny model's image side
LAYER = "b16"


_STATS_CACHE: list[Path] = []


@pytest.fixture(scope="module")
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stats-cache")
    _STATS_CACHE[:] = [path]
    return path


def sel(seed: int, mask: torch.Tensor) -> dict:
    return {"seed": seed, "mask": data_url_from_mask(mask)}


COPY = box_mask(RES, 4, 12, 4, 12)
PASTE = box_mask(RES, 16, 24, 16, 24)


def edit_body(**update) -> dict:
    return {"layer": LAYER, "name": "test edit", "copy": sel(0, COPY), "paste": sel(1, PASTE),
            "context": [sel(1, PASTE), sel(2, PASTE)], "update": {"steps": 20, **update}}


def wait_job(client: TestClient, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get("/api/job").json()["job"]
        if job["state"] != "running":
            return job
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


def run_edit(client: TestClient, body: dict | None = None) -> dict:
    r = client.post("/api/execute", json=body or edit_body())
    assert r.status_code == 202, r.text
    job = wait_job(client)
    assert job["state"] == "done", job
    return job


def gallery_pngs(client: TestClient, seeds: str = "0-7", which: str = "edited") -> dict[int, np.ndarray]:
    g = client.get("/api/gallery", params={"seeds": seeds, "per_page": 64, "which": which}).json()
    return {im["seed"]: image_from_png(client.get(im[which]).content) for im in g["images"]}


def png_of(data_url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def assert_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    for w in words:
        assert w in detail, detail


# --- pure helpers ------------------------------------------------------------------------------

def test_seeds_from_text_reads_ranges_and_lists():
    assert seeds_from_text("0-3") == [0, 1, 2, 3]
    assert seeds_from_text("3, 7,12") == [3, 7, 12]
    assert seeds_from_text("0-1,10,20-21") == [0, 1, 10, 20, 21]
    for bad in ("", "a", "5-3", "1-2-3", "-4", "99999999999"):
        with pytest.raises(InvalidEdit):
            seeds_from_text(bad)
    with pytest.raises(InvalidEdit, match="more than"):
        seeds_from_text("0-200000")


def test_save_names_reject_path_separators_and_dot_dot():
    assert check_save_name("my-edit_1.v2") == "my-edit_1.v2"
    assert check_save_name("towers.json") == "towers"
    for bad in ("../evil", "a/b", "a\\b", "..", "x..y", "", ".hidden", "-x", "a b", "a" * 81):
        with pytest.raises(InvalidEdit, match="invalid edit name"):
            check_save_name(bad)


def test_default_layer_is_the_one_with_a_quarter_resolution_key_grid():
    layers = [LayerInfo(f"b{r}", "ConvTranspose2d", 8, (8, r, r), r // 2 if r > 4 else 1, r) for r in (4, 8, 16, 32, 64)]
    assert default_layer(layers, 64) == "b32"  # 16x16 keys on the 64 px face model
    assert default_layer(layers[:4], 32) == "b16"


# --- page, info and images ---------------------------------------------------------------------

def test_page_and_static_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/static/app.js"' in r.text and "/static/app.css" in r.text
    for path, kind in (("/static/app.js", "javascript"), ("/static/app.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"]


ENDPOINTS = {
    ("GET", "/"), ("GET", "/api/info"), ("GET", "/api/gallery"), ("GET", "/api/images/{state}/{seed}.png"),
    ("POST", "/api/preview"), ("POST", "/api/suggest"), ("POST", "/api/search"), ("POST", "/api/matches"), ("POST", "/api/execute"),
    ("GET", "/api/job"), ("POST", "/api/job/cancel"), ("GET", "/api/history"), ("POST", "/api/history/undo"),
    ("POST", "/api/history/redo"), ("POST", "/api/history/revert"), ("DELETE", "/api/history/{entry_id}"),
    ("POST", "/api/history/joint"), ("POST", "/api/history/{entry_id}/take-out"),
    ("GET", "/api/edits"), ("POST", "/api/edits"), ("POST", "/api/edits/import"), ("GET", "/api/edits/{name}"),
    ("GET", "/api/edits/{name}/file"), ("POST", "/api/edits/{name}/load"), ("GET", "/api/export"),
    ("GET", "/api/openapi.json"), ("POST", "/api/suggest"), ("POST", "/api/spectrum"), ("POST", "/api/live"),
}


def test_the_api_has_exactly_the_tested_endpoints(session):
    app = create_app(session)
    routes = {(m, r.path) for r in app.routes if hasattr(r, "methods") for m in r.methods if m != "HEAD"}
    assert routes == ENDPOINTS


def test_info_lists_layers_with_resolution_and_size(client, session):
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and info["resolution"] == RES
    assert info["fingerprint"] == session.rw.info.fingerprint
    assert [l["name"] for l in info["layers"]] == ["b4", "b8", "b16", "b32"]
    b16 = next(l for l in info["layers"] if l["name"] == "b16")
    assert (b16["key_resolution"], b16["key_size"], b16["resolution"]) == (8, 16, 16)
    assert info["default_layer"] == LAYER
    assert info["update"]["steps"] > 0 and 0 < info["fire_quantile"] < 1 and info["max_page"] == 64


def test_gallery_pages_a_seed_range_and_serves_pngs(client, session):
    g = client.get("/api/gallery", params={"seeds": "0-39", "page": 2, "per_page": 16}).json()
    assert g["seeds"] == list(range(32, 40)) and (g["total"], g["page"], g["pages"]) == (40, 2, 3)
    r = client.get(g["images"][0]["edited"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"]
    expected = to_uint8(session.rw.sample([32]))[0]
    assert np.array_equal(image_from_png(r.content), expected)
    # a list, and the last page when the page is past the end
    g = client.get("/api/gallery", params={"seeds": "5,3,9", "page": 7}).json()
    assert g["seeds"] == [5, 3, 9] and g["page"] == 0


@pytest.mark.parametrize("params, words", [
    ({"seeds": "x-y"}, ["cannot read seeds"]),
    ({"seeds": "9-2"}, ["backwards"]),
    ({"seeds": "0-3", "per_page": 65}, ["per_page"]),
    ({"seeds": "0-3", "per_page": 0}, ["per_page"]),
    ({"seeds": "0-3", "which": "both2"}, ["which"]),
    ({"seeds": "0-3", "page": -1}, ["page"]),
])
def test_gallery_rejects_bad_parameters(client, params, words):
    assert_error(client.get("/api/gallery", params=params), 400, *words)


def test_image_of_an_unknown_state_is_404(client, session):
    assert_error(client.get("/api/images/deadbeef-base/0.png"), 404, "another server run")
    assert_error(client.get(f"/api/images/{session.nonce}-e99/0.png"), 404, "no longer available")


# --- previews, search, overlays ---------------------------------------------------------------

def test_preview_shows_the_copied_pixels_and_the_pasted_box(client, session):
    out = client.post("/api/preview", json={"copy": sel(0, COPY), "paste": sel(1, box_mask(RES, 18, 22, 18, 22))}).json()
    assert out["copy_box"] == [4, 12, 4, 12]
    crop = png_of(out["copy"])
    imgs = to_uint8(session.rw.sample([0, 1]))
    assert crop.shape == (8, 8, 4) and (crop[..., 3] == 255).all()
    assert np.array_equal(crop[..., :3], imgs[0][4:12, 4:12])
    assert out["paste_box"] == [16, 24, 16, 24]  # the copy's size, centred on the paste mask
    comp = png_of(out["composite"])[..., :3]
    assert np.array_equal(comp[16:24, 16:24], imgs[0][4:12, 4:12])
    outside = np.ones((RES, RES), bool)
    outside[16:24, 16:24] = False
    assert np.array_equal(comp[outside], imgs[1][outside])
    only_copy = client.post("/api/preview", json={"copy": sel(0, COPY)}).json()
    assert only_copy["composite"] is None and only_copy["paste_box"] is None


def test_search_ranks_candidates_by_the_context_direction(client):
    r = client.post("/api/search", json={"layer": LAYER, "context": [sel(1, PASTE)], "seeds": "0-49", "top_k": 5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["searched"] == 50 and len(out["matches"]) == 5
    # the five seeds whose max heat along the library's first context direction is highest, best first
    heat = _library_heat([1], list(range(50)))
    best = sorted(range(50), key=lambda s: -float(heat[s].max()))[:5]
    assert [m["seed"] for m in out["matches"]] == best
    assert [m["score"] for m in out["matches"]] == pytest.approx([float(heat[s].max()) for s in best], rel=1e-5)
    assert client.get(out["matches"][0]["url"]).status_code == 200


def _library_heat(context_seeds: list[int], seeds: list[int]) -> torch.Tensor:
    """Heat (N, Hk, Wk) of the first context direction of PASTE on `context_seeds`, through the library alone."""
    from model_rewrite.edits import Selection

    rw = Rewriter("tiny", cache_dir=_STATS_CACHE[0])
    dirs = rw.directions(LAYER, [Selection(s, PASTE) for s in context_seeds])
    return rw.heat(LAYER, dirs, seeds)


def test_matches_overlay_every_image_above_the_quantile(client):
    seeds = list(range(16))
    r = client.post("/api/matches", json={"layer": LAYER, "context": [sel(1, PASTE), sel(2, PASTE)], "seeds": seeds,
                                         "quantile": 0.9})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["seed"] for o in out["overlays"]] == seeds and out["quantile"] == 0.9
    # the threshold is the 0.9 quantile of the heat on the fixed reference sample (seeds 0-63), not on the images
    # shown; each fraction is that image's share of key cells above it
    heat = _library_heat([1, 2], seeds).double().numpy()
    threshold = float(np.quantile(_library_heat([1, 2], list(range(64))).double().numpy(), 0.9))
    assert threshold != pytest.approx(float(np.quantile(heat, 0.9)), rel=1e-3)  # the two samples disagree here
    assert out["threshold"] == pytest.approx(threshold, rel=1e-6)
    assert [o["fraction"] for o in out["overlays"]] == pytest.approx([float((h > threshold).mean()) for h in heat])
    assert png_of(out["overlays"][0]["image"]).shape[:2] == (RES, RES)
    higher = client.post("/api/matches", json={"layer": LAYER, "context": [sel(1, PASTE)], "seeds": seeds,
                                              "quantile": 0.99}).json()
    assert higher["threshold"] > out["threshold"] or np.mean([o["fraction"] for o in higher["overlays"]]) < 0.05


# --- executing ------------------------------------------------------------------------------------

def test_execute_solves_in_the_background_and_updates_the_gallery(client, session):
    before = gallery_pngs(client)
    state0 = client.get("/api/history").json()["state"]
    r = client.post("/api/execute", json=edit_body())
    assert r.status_code == 202 and r.json()["state"] == "running"
    job = wait_job(client)
    assert job["state"] == "done" and job["entry_id"] == 1 and job["steps"] == 20
    assert len(job["losses"]) == 21 and all(np.isfinite(job["losses"]))
    assert client.get("/api/job", params={"since": 15}).json()["job"]["losses"] == job["losses"][15:]
    h = client.get("/api/history").json()
    assert h["state"] != state0 and [e["id"] for e in h["entries"]] == [1]
    entry = h["entries"][0]
    assert entry["name"] == "test edit" and entry["layer"] == LAYER and entry["rank"] == 1
    assert entry["edit"]["paste"]["seed"] == 1 and len(entry["edit"]["context"]) == 2
    after = gallery_pngs(client)
    assert not np.array_equal(after[1], before[1]), "the paste image changed"
    original = gallery_pngs(client, which="original")
    assert all(np.array_equal(original[s], before[s]) for s in before), "original shows the unedited model"


def test_a_solve_whose_refinement_never_beat_the_closed_form_says_so(client, session):
    job = run_edit(client, edit_body(lr=10.0, steps=4))  # every Adam step overshoots
    assert min(job["losses"][1:]) > job["losses"][0]
    assert job["note"].startswith("no Adam step improved on the closed-form start") and "lower lr (e.g. 1)" in job["note"]
    assert client.post("/api/history/revert").status_code == 200
    job = run_edit(client, edit_body(lr=1e-3, steps=20))
    assert min(job["losses"][1:]) < job["losses"][0] and job["note"] == ""
    assert client.post("/api/history/revert").status_code == 200


def test_an_edit_whose_context_overlaps_an_earlier_one_says_so(client, session):
    first = run_edit(client, edit_body(lr=1e-3))
    assert first["note"] == ""  # nothing before it
    # the same context with another copy: its direction is the first's (overlap 1)
    body = edit_body(lr=1e-3) | {"name": "second", "copy": sel(3, COPY)}
    second = run_edit(client, body)
    (line,) = second["note"].splitlines()
    assert line.startswith("overlap: 'test edit' and 'second' respond to the same keys at ") and "(overlap 1.00" in line
    assert client.post("/api/history/revert").status_code == 200


def overlay_regions(overlay: np.ndarray, image: np.ndarray, cell: int) -> np.ndarray:
    """Where a /api/matches overlay marks its image (H, W, 3) as firing, by key-grid cells of `cell` pixels:
    a firing cell is kept as is (its edge drawn in the match colour), the others are dimmed to 45 %."""
    kept = (overlay == image).all(-1) | (overlay == MATCH_COLOR).all(-1)
    dimmed = (overlay == (image.astype(np.float32) * 0.45).astype(np.uint8)).all(-1)
    # a black pixel is both kept and dimmed: decide by whole cells
    h, w = kept.shape
    inside = kept.reshape(h // cell, cell, w // cell, cell).all((1, 3))
    outside = dimmed.reshape(h // cell, cell, w // cell, cell).all((1, 3))
    assert (inside ^ outside).all(), "every cell of the overlay is either kept or dimmed"
    return inside.repeat(cell, 0).repeat(cell, 1)


def test_an_executed_edit_is_measured_on_held_out_images(client, session, monkeypatch):
    import model_rewrite.server.context as context

    # the page's overlays fire above a quantile of a fixed reference sample; the report's, of the held-out images
    monkeypatch.setattr(context, "REFERENCE_SEEDS", tuple(range(1000, 1016)))
    job = run_edit(client)
    report = job["report"]
    seeds = list(range(1000, 1016))  # the CLI's default held-out images (--seed 1000 --samples 16)
    assert report["heldout_seeds"] == seeds and report["name"] == "test edit" and report["layer"] == LAYER
    assert client.get("/api/job").json()["job"]["report"] == report
    # the library's measurement of the same entry, in-process, gives the same figures
    again = quality_report(session.rw, job["entry_id"], seeds).to_dict()
    assert report == again
    # independently, from the page's own answers: the images before and after the edit (the gallery) and
    # where the edit's context fires on them (the match overlays on the original images)
    before = np.stack([a.astype(np.float64) for a in gallery_pngs(client, "1000-1015", "original").values()])
    after = np.stack([a.astype(np.float64) for a in gallery_pngs(client, "1000-1015").values()])
    m = client.post("/api/matches", json={"layer": LAYER, "context": edit_body()["context"], "seeds": seeds,
                                         "quantile": report["quantile"], "which": "original"}).json()
    cell = RES // next(l for l in client.get("/api/info").json()["layers"] if l["name"] == LAYER)["key_resolution"]
    regions = np.stack([overlay_regions(png_of(o["image"])[..., :3], before[i], cell) for i, o in enumerate(m["overlays"])])
    change = np.abs(after - before).mean(-1) / 127.5  # pixels in [-1, 1], as the report measures them
    assert m["threshold"] == pytest.approx(report["threshold"], rel=1e-5)
    assert regions.mean() == pytest.approx(report["fire_fraction"], abs=1e-9)
    inside, outside = change[regions].mean(), change[~regions].mean()
    assert inside == pytest.approx(report["inside_change"], abs=1e-3)  # PNGs are rounded to 8 bits
    assert outside == pytest.approx(report["outside_change"], abs=1e-3)
    assert report["ratio"] == pytest.approx(report["inside_change"] / report["outside_change"])
    assert report["ratio"] > 1, "the edit changes the images most where its rule fires"


def test_a_failing_measurement_keeps_the_edit_and_says_so(client, monkeypatch):
    import model_rewrite.server.jobs as jobs

    def fail(*_a, **_k):
        raise InvalidEdit("heat_direction 3 is out of range")

    monkeypatch.setattr(jobs, "quality_report", fail)
    job = run_edit(client)
    assert job["report"] is None and job["entry_id"] == 1
    assert "the edit is applied" in job["error"] and "heat_direction 3" in job["error"]
    assert [e["id"] for e in client.get("/api/history").json()["entries"]] == [1]


def test_a_job_reports_nothing_until_it_is_done(client):
    r = client.post("/api/execute", json=edit_body(steps=20_000))
    assert r.status_code == 202 and r.json()["report"] is None
    client.post("/api/job/cancel")
    job = wait_job(client)
    assert job["state"] == "cancelled" and job["report"] is None


def test_execute_rejects_bad_edits_with_a_clear_message(client):
    def post(**changes):
        body = edit_body()
        body.update(changes)
        return client.post("/api/execute", json=body)

    assert_error(post(layer="nope"), 400, "nope", "b16")
    assert_error(post(paste=sel(1, box_mask(64, 0, 8, 0, 8))), 400, "64x64", "32x32")
    assert_error(post(paste=sel(1, torch.zeros(RES, RES))), 400, "empty")
    assert_error(post(paste={"seed": 1, "mask": "not a data url"}), 400, "data URL")
    assert_error(post(paste={"seed": 1, "mask": "data:image/png;base64,AAAA"}), 400, "not a readable image")
    assert_error(post(paste={"seed": 1, "mask": "data:image/png;base64," + "A" * 1_000_001}), 400, "paste.mask")
    assert_error(post(paste={"seed": -1, "mask": data_url_from_mask(PASTE)}), 400, "paste.seed")
    assert_error(post(copy=None), 400, "copy region", "erase")
    assert_error(post(keys={"rank": 0}), 400, "rank")
    assert_error(post(update={"steps": "many"}), 400, "update.steps")
    assert_error(post(update={"bogus": 1}), 400, "bogus")
    assert_error(post(context=[sel(1, PASTE)] * 65), 400, "context")
    assert_error(client.post("/api/execute", content=b"{not json", headers={"content-type": "application/json"}), 400)
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (5000, 5000)).save(big, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(big.getvalue()).decode()
    assert_error(post(paste={"seed": 1, "mask": url}), 400, "5000x5000")
    r = client.post("/api/execute", content=b" " * (17 * 1024 * 1024), headers={"content-type": "application/json"})
    assert_error(r, 413, "MiB")
    chunks = (b" " * (1024 * 1024) for _ in range(17))  # streamed, no declared length
    assert_error(client.post("/api/execute", content=chunks, headers={"content-type": "application/json"}), 413, "MiB")
    assert client.get("/api/job").json()["job"] is None, "no bad request started a job"


def test_erase_mode_needs_no_copy(client):
    body = edit_body(erase=True)
    body["copy"] = None
    run_edit(client, body)
    assert len(client.get("/api/history").json()["entries"]) == 1


def test_requests_during_an_edit_get_409_and_cancel_leaves_the_model_alone(client, session):
    weight = session.rw.model.b16.conv.weight.detach().clone()
    client.get("/api/gallery", params={"seeds": "0-3"})  # cached images stay available
    r = client.post("/api/execute", json=edit_body(steps=20_000))
    assert r.status_code == 202
    assert_error(client.post("/api/execute", json=edit_body()), 409, "already being executed")
    r = client.get("/api/gallery", params={"seeds": "10-13"})
    assert_error(r, 409, "busy", "cancel")
    assert r.json()["code"] == "busy" and "/api/" not in r.json()["detail"], "busy messages speak of the edit, not of paths"
    g = client.get("/api/gallery", params={"seeds": "0-3"})  # a page whose images are all cached is answered
    assert g.status_code == 200 and g.json()["seeds"] == [0, 1, 2, 3]
    assert_error(client.post("/api/live", json={"edit": edit_body(), "seeds": [0]}), 409, "busy")
    assert_error(client.post("/api/spectrum", json={"layer": LAYER, "context": [sel(1, PASTE)]}), 409, "busy")
    assert_error(client.post("/api/history/undo"), 409, "busy")
    assert_error(client.post("/api/search", json={"layer": LAYER, "context": [sel(1, PASTE)]}), 409, "busy")
    assert_error(client.post("/api/preview", json={"copy": sel(0, COPY)}), 409, "busy")
    assert_error(client.get("/api/export"), 409, "busy")
    assert client.get(f"/api/images/{session.state()}/0.png").status_code == 200
    assert client.get("/api/info").status_code == 200 and client.get("/api/history").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get("/api/job").json()["job"]
        if job["phase"] == "solving" and job["step"] > 0:
            break
        time.sleep(0.02)
    r = client.post("/api/job/cancel")
    assert r.status_code == 200
    job = wait_job(client)
    assert job["state"] == "cancelled" and job["entry_id"] is None and 0 < job["step"] < 20_000
    assert client.get("/api/history").json()["entries"] == []
    assert torch.equal(session.rw.model.b16.conv.weight, weight)
    assert client.get("/api/gallery", params={"seeds": "10-13"}).status_code == 200
    assert_error(client.post("/api/job/cancel"), 404, "no edit is running")


def test_concurrent_executes_start_one_job(client):
    answers: list[int] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        answers.append(client.post("/api/execute", json=edit_body(steps=200)).status_code)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [202, 409, 409, 409]
    wait_job(client)
    assert len(client.get("/api/history").json()["entries"]) == 1


def test_a_failing_solve_is_reported_and_releases_the_model(client, session, monkeypatch):
    def fail(*_a, **_k):
        raise SolveError("the solved update holds NaN values; lower the learning rate")

    monkeypatch.setattr(session.rw, "solve", fail)
    client.post("/api/execute", json=edit_body())
    job = wait_job(client)
    assert job["state"] == "failed" and "lower the learning rate" in job["error"]
    monkeypatch.setattr(session.rw, "solve", lambda *a, **k: 1 / 0)
    client.post("/api/execute", json=edit_body())
    job = wait_job(client)
    assert job["state"] == "failed" and job["error"].startswith("internal error: ZeroDivisionError")
    assert client.get("/api/gallery", params={"seeds": "0-3"}).status_code == 200
    assert client.get("/api/history").json()["entries"] == []


# --- history ----------------------------------------------------------------------------------------

def test_history_undo_redo_remove_and_revert_all(client, session):
    w0 = session.rw.model.b16.conv.weight.detach().clone()
    run_edit(client, edit_body(method="closed_form"))
    w1 = session.rw.model.b16.conv.weight.detach().clone()
    body = edit_body(method="closed_form")
    body["paste"] = sel(3, box_mask(RES, 2, 10, 20, 28))
    body["context"] = []
    run_edit(client, body)
    h = client.post("/api/history/undo").json()
    assert [e["id"] for e in h["entries"]] == [1] and [e["id"] for e in h["undone"]] == [2]
    assert torch.equal(session.rw.model.b16.conv.weight, w1)
    h = client.post("/api/history/redo").json()
    assert [e["id"] for e in h["entries"]] == [1, 2] and h["undone"] == []
    h = client.delete("/api/history/1").json()
    assert [e["id"] for e in h["entries"]] == [2]
    assert_error(client.delete("/api/history/1"), 404, "no applied edit has id 1")
    h = client.post("/api/history/revert").json()
    assert h["entries"] == [] and h["state"].endswith("-base")
    assert torch.equal(session.rw.model.b16.conv.weight, w0)
    assert_error(client.post("/api/history/undo"), 404, "nothing to undo")
    client.post("/api/history/redo")
    assert_error(client.post("/api/history/redo"), 404, "nothing to redo")


def test_undo_and_redo_find_their_images_again(client, session):
    run_edit(client)
    edited = gallery_pngs(client)
    client.post("/api/history/undo")
    g = client.get("/api/gallery", params={"seeds": "0-7"}).json()
    assert g["state"].endswith("-base")
    client.post("/api/history/redo")
    assert {s: a.tobytes() for s, a in gallery_pngs(client).items()} == {s: a.tobytes() for s, a in edited.items()}


# --- saved edits ------------------------------------------------------------------------------------

def test_save_writes_spec_and_factors_and_never_overwrites_silently(client, session):
    assert_error(client.post("/api/edits", json={"name": "first"}), 404, "nothing to save")
    run_edit(client)
    r = client.post("/api/edits", json={"name": "first"})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["has_factors"] and saved["compatible"] and saved["layer"] == LAYER
    path = session.edits_dir / "first.json"
    content = path.read_bytes()
    factors = (session.edits_dir / "first.safetensors").read_bytes()
    assert_error(client.post("/api/edits", json={"name": "first"}), 409, "exists already", "overwrite")
    assert path.read_bytes() == content and (session.edits_dir / "first.safetensors").read_bytes() == factors
    # a draft saved over a solved edit does not inherit its factors
    draft = edit_body(steps=5)
    assert client.post("/api/edits", json={"name": "first", "edit": draft, "overwrite": True}).json()["has_factors"] is False
    assert not (session.edits_dir / "first.safetensors").exists()
    assert json.loads(path.read_text())["update"]["steps"] == 5


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\b", "", "x..y", "/abs"])
def test_save_names_with_path_separators_or_dot_dot_are_refused(client, session, tmp_path, name):
    run_edit(client)
    r = client.post("/api/edits", json={"name": name})
    assert_error(r, 400, "invalid edit name")
    assert not list(tmp_path.rglob("*.json")), "nothing was written"


def test_saved_edits_are_listed_read_and_downloaded(client, session):
    run_edit(client)
    client.post("/api/edits", json={"name": "cheek"})
    listing = client.get("/api/edits").json()
    assert listing["edits_dir"] == str(session.edits_dir)
    assert [e["name"] for e in listing["edits"]] == ["cheek"]
    detail = client.get("/api/edits/cheek").json()
    assert detail["has_factors"] and detail["edit"]["layer"] == LAYER and detail["edit"]["model"] == "tiny"
    assert detail["edit"]["paste"]["mask"].startswith("data:image/png;base64,")
    r = client.get("/api/edits/cheek/file")
    assert r.status_code == 200 and json.loads(r.content)["format"] == "model-rewrite-edit"
    assert "cheek.json" in r.headers["content-disposition"]
    assert_error(client.get("/api/edits/nope"), 404, "no saved edit named 'nope'")
    assert_error(client.get("/api/edits/..x"), 400, "invalid edit name")


def test_loading_a_saved_edit_gives_the_same_images_and_state(client, session):
    run_edit(client)
    edited = gallery_pngs(client)
    entry = client.get("/api/history").json()["entries"][0]
    client.post("/api/edits", json={"name": "again"})
    client.post("/api/history/revert")
    r = client.post("/api/edits/again/load", json={})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["job"] is None and out["entry"]["id"] == 2
    assert out["edit"] == entry["edit"], "the page gets back exactly the regions and settings it saved"
    loaded = gallery_pngs(client)
    assert all(np.array_equal(loaded[s], edited[s]) for s in edited)
    peek = client.post("/api/edits/again/load", json={"apply": False}).json()
    assert peek["entry"] is None and peek["job"] is None
    assert len(client.get("/api/history").json()["entries"]) == 1


def test_loading_a_draft_solves_it_as_a_job(client, session):
    body = edit_body()
    assert client.post("/api/edits", json={"name": "draft", "edit": body}).status_code == 201
    out = client.post("/api/edits/draft/load").json()
    assert out["entry"] is None and out["job"]["kind"] == "load"
    job = wait_job(client)
    assert job["state"] == "done" and job["report"]["name"] == "test edit"
    assert [e["name"] for e in client.get("/api/history").json()["entries"]] == ["test edit"]


def test_malformed_and_foreign_edit_files_are_reported(client, session):
    session.edits_dir.mkdir(parents=True)
    (session.edits_dir / "broken.json").write_text("{ nope")
    (session.edits_dir / "other.json").write_text(json.dumps({"format": "something-else"}))
    run_edit(client)
    client.post("/api/edits", json={"name": "foreign"})
    data = json.loads((session.edits_dir / "foreign.json").read_text())
    data["fingerprint"] = "0" * 16
    (session.edits_dir / "foreign.json").write_text(json.dumps(data))
    (session.edits_dir / "foreign.safetensors").unlink()
    listing = {e["name"]: e for e in client.get("/api/edits").json()["edits"]}
    assert set(listing) == {"broken", "other", "foreign"}
    assert not listing["broken"]["compatible"] and "not valid JSON" in listing["broken"]["error"]
    assert not listing["other"]["compatible"] and "not a model-rewrite edit" in listing["other"]["error"]
    assert not listing["foreign"]["compatible"] and "fingerprint" in listing["foreign"]["error"]
    assert_error(client.post("/api/edits/broken/load"), 400, "not valid JSON")
    assert_error(client.post("/api/edits/other/load"), 400, "not a model-rewrite edit")
    assert_error(client.post("/api/edits/foreign/load"), 409, "fingerprint")
    assert_error(client.post("/api/edits/missing/load"), 404, "no saved edit")


def test_import_validates_an_edit_file_before_storing_it(client, session):
    run_edit(client)
    client.post("/api/edits", json={"name": "src"})
    data = json.loads((session.edits_dir / "src.json").read_text())
    r = client.post("/api/edits/import", json={"name": "copied", "edit": data})
    assert r.status_code == 201 and r.json()["has_factors"] is False
    assert_error(client.post("/api/edits/import", json={"name": "copied", "edit": data}), 409, "exists already")
    assert_error(client.post("/api/edits/import", json={"name": "bad", "edit": {"format": "x"}}), 400, "not a model-rewrite edit")
    bad = dict(data, layer="b99")
    assert_error(client.post("/api/edits/import", json={"name": "bad", "edit": bad}), 409, "b99")
    assert_error(client.post("/api/edits/import", json={"name": "../bad", "edit": data}), 400, "invalid edit name")
    assert not (session.edits_dir / "bad.json").exists()


# --- export and replay ----------------------------------------------------------------------------

def test_export_downloads_the_edited_model(client, tmp_path):
    run_edit(client)
    edited = gallery_pngs(client, "0-3")
    r = client.get("/api/export")
    assert r.status_code == 200 and 'filename="tiny-edited.safetensors"' in r.headers["content-disposition"]
    path = tmp_path / "exported.safetensors"
    path.write_bytes(r.content)
    from model_rewrite.latents import latents_from_seeds
    from model_rewrite.models import load_generator
    from model_rewrite.render import generate

    model, info = load_generator(str(path))
    imgs = to_uint8(generate(model, latents_from_seeds(range(4), info.latent_shape)))
    assert all(np.array_equal(imgs[s], edited[s]) for s in range(4))


def test_a_saved_edit_replays_through_the_api_with_the_same_images(client, session, stats_cache):
    run_edit(client)
    edited = gallery_pngs(client, "0-7")
    client.post("/api/edits", json={"name": "replay"})
    spec, delta = load_edit(session.edits_dir / "replay.json")
    fresh = Rewriter("tiny", cache_dir=stats_cache)
    fresh.apply(spec, delta)
    assert all(np.array_equal(to_uint8(fresh.sample([s]))[0], edited[s]) for s in edited)
    resolved = Rewriter("tiny", cache_dir=stats_cache)
    resolved.apply(spec)  # solved again from the spec alone
    again = to_uint8(resolved.sample(list(edited)))
    assert max(np.abs(again[i].astype(int) - edited[s]).max() for i, s in enumerate(edited)) <= 1


def test_a_saved_edit_replays_with_model_rewrite_apply(client, session, stats_cache, tmp_path):
    cli = pytest.importorskip("model_rewrite.cli")
    run_edit(client)
    edited = gallery_pngs(client, "0-7")
    client.post("/api/edits", json={"name": "cli"})
    out = tmp_path / "applied"
    code = cli.main(["apply", str(session.edits_dir / "cli.json"), "--out", str(out), "--model", "tiny",
                     "--cache-dir", str(stats_cache), "--seeds", "0,1,2,3,4,5,6,7", "--quiet"])
    assert code == 0
    from model_rewrite.latents import latents_from_seeds
    from model_rewrite.models import load_generator
    from model_rewrite.render import generate

    model, info = load_generator(str(out / "model.safetensors"))
    imgs = to_uint8(generate(model, latents_from_seeds(range(8), info.latent_shape)))
    assert all(np.array_equal(imgs[s], edited[s]) for s in range(8))


# --- serve --------------------------------------------------------------------------------------------

def test_serve_picks_a_free_port_prints_its_url_and_serves(tmp_path):
    import httpx

    with live_server("tiny", tmp_path / "cache", tmp_path / "edits", layer="b8") as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        info = httpx.get(url + "api/info", timeout=30).json()
        assert info["model"] == "tiny" and info["default_layer"] == "b8"
        assert "text/html" in httpx.get(url, timeout=30).headers["content-type"]


def test_serve_refuses_an_unknown_layer(tmp_path):
    from model_rewrite.errors import LayerNotFound
    from model_rewrite.server.app import serve

    with pytest.raises(LayerNotFound, match="b99"):
        serve("tiny", "b99", "127.0.0.1", 0, str(tmp_path), "cpu", edits_dir=tmp_path / "edits")


# --- a StyleGAN2 checkpoint in the web app (issue 4) ---------------------------------------------

def test_the_web_app_edits_a_rosinality_stylegan2_checkpoint(stats_cache, tmp_path):
    """The same page and API on `stylegan2:PATH`: layers by resolution, gallery, an edit, undo."""
    from stylegan2_reference import rosinality_state_dict

    sd, latent_avg = rosinality_state_dict(32)
    ckpt = tmp_path / "g.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, ckpt)
    rw = Rewriter(f"stylegan2:{ckpt}", cache_dir=stats_cache)
    with TestClient(create_app(EditSession(rw, edits_dir=tmp_path / "edits")), base_url="http://127.0.0.1", headers=JSON) as client:
        info = client.get("/api/info").json()
        names = [l["name"] for l in info["layers"]]
        assert names[:3] == ["b4.conv1", "b8.conv0", "b8.conv1"] and "b32.conv1" in names and info["resolution"] == 32
        before = gallery_pngs(client, "0-3")
        assert all(im.shape == (32, 32, 3) for im in before.values())
        body = {**edit_body(), "layer": "b16.conv1", "stats": {"num_samples": 100}}
        job = run_edit(client, body)
        assert job["losses"][-1] <= job["losses"][0]
        after = gallery_pngs(client, "0-3")
        assert any(np.abs(after[s].astype(int) - before[s].astype(int)).max() > 0 for s in before)
        assert client.post("/api/history/undo").status_code == 200
        restored = gallery_pngs(client, "0-3")
        assert all(np.array_equal(restored[s], before[s]) for s in before)


def test_suggest_runs_as_a_job_and_leaves_the_model_as_it_was(client, session):
    run_edit(client)  # one applied edit that must stay applied, alone
    before = gallery_pngs(client, "0-3")
    r = client.post("/api/suggest", json=edit_body())
    assert r.status_code == 202 and r.json()["kind"] == "suggest"
    job = wait_job(client, timeout_s=120)
    assert job["state"] == "done" and job["report"] is None and job["entry_id"] is None, job
    rows = job["suggestions"]
    # every layer whose key grid is at least 4 cells on a side (b8, b16, b32 of the tiny model), ranks 1, 2, 4
    assert {(r["layer"], r["rank"]) for r in rows} == {(l, k) for l in ("b8", "b16", "b32") for k in (1, 2, 4)}
    scored = [r for r in rows if r["score"] is not None]
    for r in scored:  # the documented score (net change where the rule fires), best first
        assert r["score"] == pytest.approx(r["inside_change"] - r["outside_change"] - r["collateral"])
    assert [r["score"] for r in scored] == sorted((r["score"] for r in scored), reverse=True)
    assert rows[: len(scored)] == scored
    history = client.get("/api/history").json()
    assert [e["id"] for e in history["entries"]] == [1] and history["undone"] == []
    after = gallery_pngs(client, "0-3")
    assert all(np.array_equal(before[s], after[s]) for s in before)


def test_the_preview_renders_the_goal_at_the_chosen_layer(client, session):
    body = {"copy": sel(0, COPY), "paste": sel(1, PASTE)}
    plain = client.post("/api/preview", json=body).json()
    assert plain["rendered"] is None
    shown = {}
    for layer in ("b8", "b16"):
        out = client.post("/api/preview", json={**body, "layer": layer}).json()
        shown[layer] = image_from_png(base64.b64decode(out["rendered"].split(",", 1)[1]))
        spec = session.rw.new_edit(layer, paste=Selection(1, PASTE), copy=Selection(0, COPY))
        want = ((session.rw.render_goal(spec).clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.abs(shown[layer].astype(np.float32) - want).max() <= 1.0  # the library's rendering, as a PNG
    assert not np.array_equal(shown["b8"], shown["b16"])  # it follows the layer
    assert client.post("/api/preview", json={**body, "layer": "nope"}).status_code == 400


# --- the original view, seeds out of range, saving a chosen entry, a missing edits folder -------------------------

def test_the_original_view_after_an_edit_shows_the_unedited_model(client, session, stats_cache):
    run_edit(client)
    fresh = Rewriter("tiny", cache_dir=stats_cache)
    seeds = [20, 21, 22]  # never rendered before the edit: the original images cannot come from the cache
    want = to_uint8(fresh.sample(seeds))
    original = gallery_pngs(client, "20-22", which="original")
    assert all(np.array_equal(original[s], want[i]) for i, s in enumerate(seeds))
    edited = gallery_pngs(client, "20-22", which="edited")
    assert not all(np.array_equal(edited[s], want[i]) for i, s in enumerate(seeds))
    # and in the library: sample_original leaves the edited model as it is
    torch.testing.assert_close(session.rw.sample_original(seeds), fresh.sample(seeds), rtol=0, atol=1e-6)
    assert np.array_equal(to_uint8(session.rw.sample(seeds)), np.stack([edited[s] for s in seeds]))


def test_seeds_out_of_range_are_refused(client, session):
    from model_rewrite.latents import MAX_SEED

    state = client.get("/api/history").json()["state"]
    assert_error(client.get(f"/api/images/{state}/{MAX_SEED + 1}.png"), 404, f"seed {MAX_SEED + 1} is out of range")
    assert_error(client.get(f"/api/images/{state}/-1.png"), 404, "seed -1 is out of range")
    assert client.get(f"/api/images/{state}/{MAX_SEED}.png").status_code == 200
    assert_error(client.get("/api/gallery", params={"seeds": f"0,{MAX_SEED + 1}"}), 400, f"at most {MAX_SEED}")
    r = client.post("/api/matches", json={"layer": LAYER, "context": [sel(1, PASTE)], "seeds": [MAX_SEED + 1]})
    assert r.status_code in (400, 422)


def test_saving_a_chosen_history_entry_writes_that_entry(client, session):
    run_edit(client, edit_body(method="closed_form"))
    second = edit_body(method="closed_form")
    second["name"] = "second edit"
    second["paste"] = sel(3, box_mask(RES, 2, 10, 20, 28))
    run_edit(client, second)
    first, last = session.rw.stack.entries
    r = client.post("/api/edits", json={"name": "chosen", "entry_id": first.id})
    assert r.status_code == 201, r.text
    spec, delta = load_edit(session.edits_dir / "chosen.json")
    assert spec.to_dict() == first.spec.to_dict() and torch.equal(delta.factor, first.delta.factor)
    client.post("/api/edits", json={"name": "latest"})
    spec, delta = load_edit(session.edits_dir / "latest.json")
    assert spec.name == "second edit" and torch.equal(delta.factor, last.delta.factor)
    assert_error(client.post("/api/edits", json={"name": "nope", "entry_id": 99}), 404, "no applied edit has id 99")
    assert not (session.edits_dir / "nope.json").exists()


def test_a_missing_edits_folder_lists_nothing_and_is_made_on_the_first_save(client, session):
    assert not session.edits_dir.exists()
    listing = client.get("/api/edits").json()
    assert listing["edits"] == [] and listing["edits_dir"] == str(session.edits_dir)
    assert_error(client.get("/api/edits/anything"), 404, "no saved edit named 'anything'")
    assert_error(client.post("/api/edits/anything/load", json={}), 404, "no saved edit named 'anything'")
    run_edit(client)
    assert client.post("/api/edits", json={"name": "first"}).status_code == 201
    assert [e["name"] for e in client.get("/api/edits").json()["edits"]] == ["first"]
