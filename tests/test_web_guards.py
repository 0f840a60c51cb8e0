"""The web app against a visited web page and huge inputs (issue 10, items 1-3 and 7): cross-site requests,
DNS rebinding (Host), PNG decompression, unbounded work. Against the ASGI app and a real server process.

The expected answers come from the issue's rules and HTTP (403 foreign origin, 415 not JSON, 400 foreign
Host), and the memory bound from arithmetic: one decoded 4096x4096 mask is 64 MiB of float32."""

from __future__ import annotations

import base64
import http.client
import io
import json
import warnings
from urllib.parse import urlsplit

import pytest
import torch

pytest.importorskip("fastapi", reason="the web app needs the [web] extra (fastapi, uvicorn)")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from helpers import box_mask, live_server_process, peak_memory_kib
from web_fixtures import JSON, OWN, session, stats_cache  # noqa: F401  (fixtures)

from model_rewrite.masks import data_url_from_mask
from model_rewrite.server.app import create_app
from model_rewrite.server.session import EditSession

RES, LAYER = 32, "b16"


@pytest.fixture
def client(session: EditSession):
    with TestClient(create_app(session), base_url=OWN) as c:
        yield c


def sel(seed: int, mask: torch.Tensor) -> dict:
    return {"seed": seed, "mask": data_url_from_mask(mask)}


def blank_png_url(side: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def push_edit(session: EditSession) -> None:
    """An applied edit on the session's stack (so that revert/undo have something to change)."""
    m = box_mask(RES, 8, 16, 8, 16)
    from model_rewrite import Selection, UpdateConfig

    spec = session.rw.new_edit(LAYER, paste=Selection(1, m), copy=Selection(2, m), update=UpdateConfig(method="closed_form"))
    session.rw.apply(spec)


# --- item 1: cross-site requests ------------------------------------------------------------------

CHANGES = [("POST", "/api/history/revert"), ("POST", "/api/history/undo"), ("POST", "/api/history/redo"),
           ("POST", "/api/job/cancel"), ("POST", "/api/edits/x/load"), ("DELETE", "/api/history/1"),
           ("POST", "/api/edits"), ("POST", "/api/execute"), ("POST", "/api/edits/import")]


@pytest.mark.parametrize("method, path", CHANGES)
def test_a_foreign_origin_is_refused_on_every_change(client, session, method, path):
    push_edit(session)
    for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                    {"Origin": "http://evil.example", **JSON}, {"Origin": "null", **JSON},
                    {"Referer": "http://evil.example/page.html", **JSON},
                    {"Origin": "http://127.0.0.1:1", **JSON}):  # another port is another origin
        r = client.request(method, path, headers=headers)
        assert r.status_code == 403, (headers, r.status_code, r.text)
        assert "another site" in r.json()["detail"]
    assert len(session.rw.stack.entries) == 1  # nothing was reverted, undone or removed


@pytest.mark.parametrize("method, path", CHANGES)
def test_every_change_must_say_json(client, session, method, path):
    push_edit(session)
    for headers in ({"Origin": OWN, "Content-Type": "text/plain"}, {"Origin": OWN}, {},
                    {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "multipart/form-data"}):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 415, (headers, r.status_code, r.text)
        assert "application/json" in r.json()["detail"]
    assert len(session.rw.stack.entries) == 1


def test_the_own_page_and_plain_clients_are_served(client, session):
    push_edit(session)
    for headers in ({"Origin": OWN, **JSON}, {"Referer": OWN + "/", **JSON}, JSON,
                    {"Content-Type": "application/json; charset=utf-8"}):
        assert client.post("/api/history/undo", headers=headers).status_code == 200
        assert client.post("/api/history/redo", headers=headers).status_code == 200
    assert client.post("/api/history/revert", headers={"Origin": OWN, **JSON}).status_code == 200
    assert session.rw.stack.entries == []
    assert client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200  # reads change nothing


# --- item 2: DNS rebinding ------------------------------------------------------------------------

def test_only_the_servers_own_host_names_are_answered(session):
    app = create_app(session)
    for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.1:8000", "localhost:9"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert c.get("/api/info").status_code == 200, host
    for host in ("rebind.evil.example", "evil.example:8000", "127.0.0.1.evil.example", "0.0.0.0"):
        with TestClient(app, base_url=f"http://{host}") as c:
            for path in ("/api/export", "/api/info", "/"):
                assert c.get(path).status_code in (400, 421), (host, path)
    with TestClient(create_app(session, host="myhost.lan"), base_url="http://myhost.lan:8000") as c:
        assert c.get("/api/info").status_code == 200  # --host names one more


# --- items 3 and 7: decoding and work bounds --------------------------------------------------------

def test_masks_larger_than_the_image_are_refused_before_decoding(client, monkeypatch):
    import model_rewrite.masks as masks

    decoded = []
    monkeypatch.setattr(masks, "mask_from_image", lambda img: decoded.append(img.size) or torch.zeros(1))
    big = blank_png_url(4096)
    body = {"layer": LAYER, "context": [{"seed": i, "mask": big} for i in range(16)]}
    for path in ("/api/search", "/api/matches"):
        r = client.post(path, json=body if path == "/api/search" else {**body, "seeds": [1]})
        assert r.status_code == 400 and "4096x4096" in r.json()["detail"] and "limit of 32x32" in r.json()["detail"]
    r = client.post("/api/preview", json={"copy": {"seed": 1, "mask": big}})
    assert r.status_code == 400
    edit = {"layer": LAYER, "paste": {"seed": 1, "mask": big}, "copy": {"seed": 2, "mask": big}}
    assert client.post("/api/execute", json=edit).status_code == 400
    data = {"format": "model-rewrite-edit", "version": 2, "model": "tiny", "fingerprint": "x", "layer": LAYER,
            "paste": {"seed": 1, "mask": big}}
    assert client.post("/api/edits/import", json={"name": "big", "edit": data}).status_code == 400
    # inside an edit-stack or multi-edit file: a small mask first, the big one after it; none decoded either
    small = {**data, "paste": {"seed": 1, "mask": blank_png_url(RES)}}
    for key, fmt in (("edits", "model-rewrite-edit-stack"), ("members", "model-rewrite-multi-edit")):
        many = {"format": fmt, "version": 1, "model": "tiny", "fingerprint": "x", key: [small, data]}
        r = client.post("/api/edits/import", json={"name": "big", "edit": many})
        assert r.status_code == 400 and "4096x4096" in r.json()["detail"], r.text
    assert decoded == []  # nothing was decoded


def test_the_masks_of_one_request_are_bounded_in_all():
    from model_rewrite.errors import InvalidEdit
    from model_rewrite.masks import MAX_REQUEST_PIXELS, check_mask_budget

    side = 1024
    n = MAX_REQUEST_PIXELS // (side * side)  # exactly at the budget: accepted; one more mask: refused
    url = blank_png_url(side)
    check_mask_budget([url] * n, side)
    with pytest.raises(InvalidEdit, match="pixels in all"):
        check_mask_budget([url] * (n + 1), side)


@pytest.mark.parametrize("field, value", [("steps", 10**12), ("steps", 20_001), ("lr", 11.0), ("erase_units", 5000),
                                          ("preserve", 1e9), ("ridge", -1.0)])
def test_unbounded_update_settings_are_refused(client, field, value):
    m = box_mask(RES, 8, 16, 8, 16)
    body = {"layer": LAYER, "paste": sel(1, m), "copy": sel(2, m), "update": {field: value}}
    r = client.post("/api/execute", json=body)
    assert r.status_code == 400 and field in r.json()["detail"], r.text
    assert client.get("/api/job").json()["job"] is None  # no job was started


@pytest.mark.parametrize("field, value", [("num_samples", 10**9), ("num_samples", 100_001), ("batch_size", 0)])
def test_unbounded_statistics_are_refused(client, field, value):
    m = box_mask(RES, 8, 16, 8, 16)
    r = client.post("/api/search", json={"layer": LAYER, "context": [sel(1, m)], "stats": {field: value}})
    assert r.status_code == 400 and field in r.json()["detail"], r.text


# --- against a real server process ----------------------------------------------------------------

def raw_request(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP request with exactly these headers (Host included), as a page or a rebinding attacker sends it."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("guards")
    with live_server_process("tiny", tmp / "cache", tmp / "edits") as (url, proc):
        yield url, proc


def test_the_real_server_refuses_cross_site_and_rebinding_requests(server):
    url, _ = server
    own = urlsplit(url).netloc
    status, _ = raw_request(url, "POST", "/api/history/revert", {"Host": own, "Origin": "http://evil.example",
                                                                  "Content-Type": "text/plain"})
    assert status == 403
    status, _ = raw_request(url, "POST", "/api/history/revert", {"Host": own, "Content-Type": "text/plain"})
    assert status == 415
    status, body = raw_request(url, "POST", "/api/history/revert", {"Host": own, "Origin": url.rstrip("/"), **JSON})
    assert status == 200 and json.loads(body)["entries"] == []
    status, _ = raw_request(url, "GET", "/api/export", {"Host": "rebind.evil.example"})
    assert status in (400, 421)
    status, body = raw_request(url, "GET", "/api/info", {"Host": f"localhost:{urlsplit(url).port}"})
    assert status == 200 and json.loads(body)["model"] == "tiny"


def masks_request(url: str, count: int) -> int:
    big = blank_png_url(4096)
    body = json.dumps({"layer": LAYER, "context": [{"seed": i, "mask": big} for i in range(count)]}).encode()
    status, _ = raw_request(url, "POST", "/api/search", {"Host": urlsplit(url).netloc, **JSON}, body)
    return status


def test_huge_masks_cost_the_real_server_no_memory(server):
    """16 and 64 blank 4096x4096 masks (a few kB each as PNG): refused from their headers, so the server's
    peak memory grows by far less than one decoded mask (64 MiB of float32)."""
    url, proc = server
    small = json.dumps({"layer": LAYER, "context": [sel(1, box_mask(RES, 8, 16, 8, 16))], "seeds": "0-3"}).encode()
    assert raw_request(url, "POST", "/api/search", {"Host": urlsplit(url).netloc, **JSON}, small)[0] == 200  # warm
    before = peak_memory_kib(proc.pid)
    assert masks_request(url, 16) == 400
    after16 = peak_memory_kib(proc.pid)
    assert masks_request(url, 64) == 400
    after64 = peak_memory_kib(proc.pid)
    print(f"server peak memory: {before / 1024:.0f} MiB before, {after16 / 1024:.0f} MiB after 16 masks, "
          f"{after64 / 1024:.0f} MiB after 64 masks")
    assert after64 - before < 48 * 1024, (before, after16, after64)
