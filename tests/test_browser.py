"""End to end in a real browser: Playwright drives Debian's Chromium against a live `serve()` on the face model.

Screenshots of the key states are kept in test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from helpers import (ARTIFACTS, CHROMIUM, FACE_MODEL_REASON, chromium, has_face_model, image_from_png, live_server,
                     open_advanced, served_page)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the python package playwright")

RES = 64  # the face model's image side
COPY_SEED, PASTE_SEED, CONTEXT_SEED = 0, 1, 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    with live_server("faces", root / "cache", root / "edits") as url:
        yield url, root / "edits"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    with served_page(browser, server[0], 1400, 1000) as pg:
        yield pg


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=False)


def paint(pg, seed: int, points: list[tuple[float, float]], which: str = "edited", res: int = RES) -> None:
    """Drag the brush through `points` (image pixels of a `res`-pixel image) on the gallery image of `seed`."""
    canvas = pg.locator(f'#gallery .card[data-seed="{seed}"] .view.{which} canvas.paint')
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    xy = [(box["x"] + x / res * box["width"], box["y"] + y / res * box["height"]) for y, x in points]
    pg.mouse.move(*xy[0])
    pg.mouse.down()
    for p in xy[1:]:
        pg.mouse.move(*p, steps=4)
    pg.mouse.up()


def scribble(y0: int, y1: int, x0: int, x1: int) -> list[tuple[float, float]]:
    """A zig-zag covering the box (y0, y1, x0, x1) with a 6 px brush."""
    pts = []
    for i, y in enumerate(range(y0 + 2, y1 - 1, 4)):
        pts += [(y, x0 + 2), (y, x1 - 2)] if i % 2 == 0 else [(y, x1 - 2), (y, x0 + 2)]
    return pts


def tool(pg, name: str) -> None:
    pg.locator(f".tool.{name}").click()


def gallery_images(pg, which: str = "edited") -> dict[int, np.ndarray]:
    """The images the gallery shows (fetched through their URLs), by seed."""
    srcs = pg.eval_on_selector_all(f"#gallery .card img[data-which='{which}']",
                                   "els => els.map(e => [e.closest('.card').dataset.seed, e.getAttribute('src')])")
    out = {}
    for seed, src in srcs:
        resp = pg.request.get(src if src.startswith("http") else pg.url.rstrip("/") + src)
        assert resp.ok, src
        out[int(seed)] = image_from_png(resp.body()).astype(np.float32)
    return out


def wait_job(pg, state: str = "done", timeout_ms: int = 90_000) -> None:
    pg.wait_for_selector(f"#job-status[data-state='{state}']", timeout=timeout_ms)
    pg.wait_for_function("() => !document.body.classList.contains('running')")


def wait_gallery_state(pg, pattern: str) -> str:
    pg.wait_for_function(f"() => /{pattern}/.test(document.querySelector('#gallery').dataset.state || '')")
    return pg.get_attribute("#gallery", "data-state")


def test_paint_execute_toggle_undo_save_reload_load_export(page, server, tmp_path):
    pg = page
    edits_dir = server[1]
    pg.uncheck("#live")  # this test reads the model's images; the live preview has its own test
    # 16 images a page on seeds 0-15
    pg.select_option("#per-page", "16")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 64 images')")
    assert pg.locator("#gallery .card").count() == 16
    shot(pg, "01-loaded")
    before = gallery_images(pg)
    assert len(before) == 16

    # copy: the right eye region of seed 0; the preview shows what was taken
    tool(pg, "copy")
    paint(pg, COPY_SEED, scribble(22, 34, 34, 50))
    pg.wait_for_function("() => (document.querySelector('#copy-preview').src || '').startsWith('data:image/png')")

    # paste: a click-and-drag on the left cheek of seed 1; the composite shows the box
    tool(pg, "paste")
    paste_box = (36, 48, 12, 28)
    paint(pg, PASTE_SEED, scribble(*paste_box))
    pg.wait_for_selector("#paste-box:not([hidden])")
    pg.wait_for_function("() => (document.querySelector('#paste-preview').src || '').startsWith('data:image/png')")
    # beside the painted composite, the goal as the model draws it at the chosen layer; it follows the layer
    pg.wait_for_function("() => (document.querySelector('#rendered-preview').src || '').startsWith('data:image/png')")
    layer = pg.input_value("#layer")
    assert pg.inner_text("#rendered-layer") == layer
    drawn = pg.get_attribute("#rendered-preview", "src")
    other = "b16" if layer != "b16" else "b32"
    pg.select_option("#layer", other)
    pg.wait_for_function(f"() => document.querySelector('#rendered-layer').textContent === '{other}'")
    assert pg.get_attribute("#rendered-preview", "src") != drawn
    pg.select_option("#layer", layer)
    pg.wait_for_function(f"() => document.querySelector('#rendered-layer').textContent === '{layer}'")
    shot(pg, "02-copy-paste")

    # context: the same cheek on two images, each lands in the tray
    tool(pg, "context")
    paint(pg, PASTE_SEED, scribble(*paste_box))
    paint(pg, CONTEXT_SEED, scribble(*paste_box))
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 2")
    # remove one and add it again: the tray follows
    pg.click(f'#context-tray .tray-item[data-seed="{CONTEXT_SEED}"] .remove')
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 1")
    paint(pg, CONTEXT_SEED, scribble(*paste_box))
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 2")
    shot(pg, "03-context")

    # search and show matches
    pg.fill("#search-seeds", "0-63")
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#search-results .tray-item').length === 12")
    pg.check("#show-matches")
    pg.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.src.startsWith('data:'))")
    shot(pg, "04-matches")
    pg.uncheck("#show-matches")
    pg.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => !i.src.startsWith('data:'))")

    # execute: live progress, then the gallery shows the edited model
    base_state = pg.get_attribute("#gallery", "data-state")
    pg.click("#execute")
    pg.wait_for_selector("#cancel:not([hidden])")
    wait_job(pg)
    edited_state = wait_gallery_state(pg, "-e1$")
    assert edited_state != base_state
    # the job's quality report on held-out images, one line per figure with its verdict, above the gallery
    pg.wait_for_selector("#edit-report:not([hidden])")
    text = pg.inner_text("#edit-report")
    report = pg.request.get(pg.url.rstrip("/") + "/api/job").json()["job"]["report"]
    assert report["heldout_seeds"] == list(range(1000, 1016))
    assert text.splitlines() == ["How the edit took on 16 held-out images:", *report["lines"]], text
    m = re.search(r"locality ([\d.]+)x \(inside ([\d.]+), outside ([\d.]+)\)", text)
    assert m, text
    for shown, key, digits in zip(m.groups(), ("ratio", "inside_change", "outside_change"), (1, 3, 3)):
        assert abs(float(shown) - report[key]) <= 0.5 * 10 ** -digits + 1e-9, (shown, key, report)
    assert re.search(r"paste fidelity -?[\d.]+: ", text) and "transfer " in text and "collateral " in text
    loss_pixels = pg.evaluate("() => { const c = document.querySelector('#loss'); const d = c.getContext('2d')"
                              ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
                              " n += d[i] > 0; return n; }")
    assert loss_pixels > 50, "the loss curve was drawn"
    shot(pg, "05-executed")
    pg.uncheck("#show-regions")
    shot(pg, "05b-executed-no-regions")
    pg.check("#show-regions")
    after = gallery_images(pg)

    # the paste image changed most inside the paste box; the change is local
    diff = np.abs(after[PASTE_SEED] - before[PASTE_SEED]).mean(-1)  # (H, W)
    y0, y1, x0, x1 = paste_box
    inside = diff[y0:y1, x0:x1].mean()
    far = np.ones_like(diff, dtype=bool)
    far[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = False
    assert inside > 8.0, f"paste region barely changed ({inside:.2f})"
    assert inside > 2.5 * diff[far].mean(), (inside, diff[far].mean())

    # toggle: original shows the unedited images, edited the new ones
    pg.check("input[name=view][value=original]")
    pg.wait_for_function("() => document.querySelector('#gallery').dataset.view === 'original'")
    original = gallery_images(pg, "original")
    assert all(np.array_equal(original[s], before[s]) for s in before)
    shot(pg, "06-original")
    pg.check("input[name=view][value=both]")
    pg.wait_for_function("() => document.querySelectorAll('#gallery .card[data-seed=\"1\"] img').length === 2")
    shot(pg, "07-side-by-side")
    pg.check("input[name=view][value=edited]")
    pg.wait_for_function("() => document.querySelector('#gallery').dataset.view === 'edited'")

    # undo gives back the original images; redo the edit
    pg.click("#undo")
    wait_gallery_state(pg, "-base$")
    assert pg.is_hidden("#edit-report"), "the report described the edit just undone"
    undone = gallery_images(pg)
    assert all(np.array_equal(undone[s], before[s]) for s in before)
    assert pg.locator("#history li.undone").count() == 1
    pg.click("#redo")
    wait_gallery_state(pg, "-e1$")
    assert np.array_equal(gallery_images(pg)[PASTE_SEED], after[PASTE_SEED])

    # save; saving again under the same name without overwrite is refused
    pg.fill("#save-name", "e2e-cheek")
    pg.click("#save")
    pg.wait_for_selector('#saved-list li[data-name="e2e-cheek"]')
    assert (edits_dir / "e2e-cheek.json").exists() and (edits_dir / "e2e-cheek.safetensors").exists()
    pg.click("#save")
    pg.wait_for_selector("#message.busy, #message.error")
    assert "exists already" in pg.inner_text("#message")

    # revert all, reload the page, load the edit: same images and the same regions in the page
    pg.click("#revert")
    wait_gallery_state(pg, "-base$")
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    pg.uncheck("#live")
    assert pg.locator("#context-tray .tray-item").count() == 0
    pg.click('#saved-list button.load[data-name="e2e-cheek"]')
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 2")
    state = wait_gallery_state(pg, "-e2$")
    pg.wait_for_selector("#paste-box:not([hidden])")
    assert pg.get_attribute("#gallery", "data-state") == state
    assert pg.input_value("#seeds") == f"{PASTE_SEED},{COPY_SEED},{CONTEXT_SEED}"
    draft = pg.evaluate("() => draftJson()")  # what Execute or Save would send now
    from model_rewrite.edits import load_edit
    from model_rewrite.masks import mask_from_data_url

    spec, _ = load_edit(edits_dir / "e2e-cheek.json")
    assert draft["layer"] == spec.layer and draft["name"] == spec.name
    assert {k: draft["update"][k] for k in ("steps", "lr", "erase")} == \
        {k: getattr(spec.update, k) for k in ("steps", "lr", "erase")}
    assert draft["keys"]["rank"] == spec.keys.rank
    pairs = [(draft["paste"], spec.paste), (draft["copy"], spec.copy)] + list(zip(draft["context"], spec.context))
    assert len(draft["context"]) == len(spec.context) == 2
    for got, want in pairs:
        assert got["seed"] == want.seed
        assert torch.allclose(mask_from_data_url(got["mask"]), want.mask, atol=1 / 255)
    reloaded = gallery_images(pg)
    for s in (PASTE_SEED, COPY_SEED, CONTEXT_SEED):
        assert np.array_equal(reloaded[s], after[s]), f"seed {s} differs after loading the saved edit"
    shot(pg, "08-loaded")

    # export: a download that reloads as the edited model
    with pg.expect_download() as dl:
        pg.click("#export")
    path = tmp_path / "exported.safetensors"
    dl.value.save_as(path)
    from model_rewrite.latents import latents_from_seeds
    from model_rewrite.models import load_generator
    from model_rewrite.render import generate, to_uint8

    model, info = load_generator(str(path))
    img = to_uint8(generate(model, latents_from_seeds([PASTE_SEED], info.latent_shape)))[0].astype(np.float32)
    assert np.array_equal(img, after[PASTE_SEED])


def test_cancel_leaves_the_model_unchanged(page):
    pg = page
    pg.fill("#seeds", "0-15")
    pg.press("#seeds", "Enter")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 16 images')")
    state = pg.get_attribute("#gallery", "data-state")
    tool(pg, "copy")
    paint(pg, 3, scribble(20, 32, 20, 36))
    tool(pg, "paste")
    paint(pg, 4, scribble(20, 32, 20, 36))
    open_advanced(pg)
    pg.fill("#steps", "5000")
    pg.click("#execute")
    pg.wait_for_function("() => /step [1-9]/.test(document.querySelector('#job-status').textContent)", timeout=60_000)
    pg.click("#cancel")
    wait_job(pg, "cancelled")
    assert "cancelled" in pg.inner_text("#message")
    assert re.search(r"-(base|e\d+(_\d+)*)$", state)
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    assert pg.get_attribute("#gallery", "data-state") == state
    shot(pg, "09-cancelled")


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e-tiny")
    with live_server("tiny", root / "cache", root / "edits") as url:
        yield url


def test_suggest_shows_a_ranked_table_whose_rows_set_layer_and_rank(browser, tiny_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(tiny_server)
    pg.wait_for_selector("body[data-ready='1']")
    tool(pg, "copy")
    paint(pg, 0, scribble(4, 14, 4, 14), res=32)  # the tiny model makes 32-pixel images
    tool(pg, "paste")
    paint(pg, 1, scribble(16, 26, 16, 26), res=32)
    pg.click("#suggest")
    wait_job(pg)
    pg.wait_for_selector("#suggestions:not([hidden])")
    rows = pg.eval_on_selector_all("#suggestions tbody tr", "trs => trs.map(t => [t.dataset.layer, t.dataset.rank])")
    job = pg.request.get(tiny_server.rstrip("/") + "/api/job").json()["job"]
    assert rows == [[r["layer"], str(r["rank"])] for r in job["suggestions"]] and len(rows) == 9
    shot(pg, "suggest")
    last = pg.locator("#suggestions tbody tr").nth(len(rows) - 1)
    if last.locator("button.use").count():
        last.locator("button.use").click()
        assert pg.input_value("#layer") == rows[-1][0] and pg.input_value("#rank") == rows[-1][1]
    first = pg.locator("#suggestions tbody tr").first
    first.locator("button.use").click()
    assert pg.input_value("#layer") == rows[0][0] and pg.input_value("#rank") == rows[0][1]
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
