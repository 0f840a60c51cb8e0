"""Issue 12 in a real browser: a scripted user on the face model gets from the first look to a good edit.

Playwright drives Debian's Chromium against a live `serve()`: the guide and the next step, the live preview
while painting, browsing during a job (queued, never disagreeing with the inputs), controls enabled from the
server's state, duplicates and unique names, saving the whole stack and loading it back, search results and
match selection, the context's singular values, the layout at 1280 and 800 px, the keyboard alone, input
checks, and axe-core (no serious or critical violations). Screenshots of the key states go to test-artifacts/
as workflow-<state>-<width>.png.
"""

from __future__ import annotations

import json
from pathlib import Path
import os
import re

import numpy as np
import pytest
from helpers import (ARTIFACTS, CHROMIUM, FACE_MODEL_REASON, chromium, has_face_model, image_from_png, live_server,
                     open_advanced, served_page)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the python package playwright")

RES = 64
COPY_BOX, PASTE_BOX = (22, 34, 34, 50), (36, 48, 12, 28)  # an eye of seed 0; the left cheek of seed 1
WIDTHS = (1280, 800)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e-workflow")
    with live_server("faces", root / "cache", root / "edits") as url:
        yield url, root / "edits"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    """A first visit at 1280 x 900 with an empty history (the model is reverted for each test)."""
    with served_page(browser, server[0], 1280, 900) as pg:
        pg.evaluate("() => fetch('/api/history/revert', {method: 'POST', headers: {'Content-Type': 'application/json'}})"
                    ".then((r) => { if (!r.ok) throw new Error('revert: ' + r.status); })")
        pg.reload()
        pg.wait_for_selector("body[data-ready='1']")
        yield pg


def shots(pg, name: str) -> None:
    """Screenshots of the page as it is, at 1280 and at 800 px wide."""
    size = pg.viewport_size
    for w in WIDTHS:
        pg.set_viewport_size({"width": w, "height": 900})
        pg.wait_for_timeout(150)
        pg.screenshot(path=str(ARTIFACTS / f"workflow-{name}-{w}.png"))
    pg.set_viewport_size(size)


def paint(pg, seed: int, box: tuple[int, int, int, int], which: str = "edited") -> None:
    """A zig-zag covering `box` (y0, y1, x0, x1) with the mouse on the gallery image of `seed`."""
    y0, y1, x0, x1 = box
    pts = []
    for i, y in enumerate(range(y0 + 2, y1 - 1, 4)):
        pts += [(y, x0 + 2), (y, x1 - 2)] if i % 2 == 0 else [(y, x1 - 2), (y, x0 + 2)]
    canvas = pg.locator(f'#gallery .card[data-seed="{seed}"] .view.{which} canvas.paint')
    canvas.scroll_into_view_if_needed()
    b = canvas.bounding_box()
    xy = [(b["x"] + x / RES * b["width"], b["y"] + y / RES * b["height"]) for y, x in pts]
    pg.mouse.move(*xy[0])
    pg.mouse.down()
    for p in xy[1:]:
        pg.mouse.move(*p, steps=4)
    pg.mouse.up()


def tool(pg, name: str) -> None:
    pg.locator(f".tool.{name}").click()


def wait_job(pg, state: str = "done", timeout_ms: int = 120_000) -> None:
    pg.wait_for_selector(f"#job-status[data-state='{state}']", timeout=timeout_ms)
    pg.wait_for_function("() => !document.body.classList.contains('running')")


def paint_edit(pg, context_seeds: tuple[int, ...] = (1, 2)) -> None:
    tool(pg, "copy")
    paint(pg, 0, COPY_BOX)
    tool(pg, "paste")
    paint(pg, 1, PASTE_BOX)
    if context_seeds:
        tool(pg, "context")
        for s in context_seeds:
            paint(pg, s, PASTE_BOX)
        pg.wait_for_function(f"() => document.querySelectorAll('#context-tray .tray-item').length === {len(context_seeds)}")


def history_names(pg) -> list[str]:
    return pg.eval_on_selector_all("#history > li:not(.undone) > .name", "els => els.map(e => e.textContent)")


def disabled(pg, sel: str) -> bool:
    return pg.eval_on_selector(sel, "e => e.disabled")


# --- item 2 and 9: the guide, the next step and the layout --------------------------------------------

def test_first_run_shows_the_guide_and_the_next_step_and_fits_800_to_1920(page):
    pg = page
    assert pg.is_visible("#guide") and pg.get_attribute("#guide-button", "aria-expanded") == "true"
    assert "Copy" in pg.inner_text("#next-step") and pg.evaluate("() => document.body.classList.contains('first-run')")
    guide = pg.inner_text("#guide")
    for words in ("Copy", "Paste", "Context", "Execute", "Layer", "Rank", "Matches", "edited/original", "Space"):
        assert words in guide, words
    assert "(none: the paste region)" not in pg.content()
    assert "paste region is used" in pg.inner_text("#context-hint")
    assert "quarter of the image side" in pg.inner_text("#layer-desc")
    assert disabled(pg, "#execute") and disabled(pg, "#undo") and disabled(pg, "#redo") and disabled(pg, "#revert")
    shots(pg, "01-first-run")
    # the guide closes, stays closed on the next visit, and comes back with its button or '?'
    pg.click("#guide-close")
    assert pg.is_hidden("#guide")
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    assert pg.is_hidden("#guide")
    pg.keyboard.press("?")
    assert pg.is_visible("#guide")
    pg.click("#guide-button")
    assert pg.is_hidden("#guide")
    # status messages never replace the next step
    pg.fill("#seeds", "0-15")
    pg.press("#seeds", "Enter")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 16 images')")
    assert "Copy" in pg.inner_text("#next-step")
    # the layout: the gallery fills its column at every width, the footer covers nothing, the header is one row
    for width in (800, 1280, 1920):
        pg.set_viewport_size({"width": width, "height": 900})
        pg.wait_for_timeout(150)
        m = pg.evaluate("""() => {
          const r = (s) => document.querySelector(s).getBoundingClientRect();
          const cards = [...document.querySelectorAll('#gallery .card')].map((c) => c.getBoundingClientRect());
          const cols = new Set(cards.map((c) => Math.round(c.left))).size;
          return {header: r('header').height, tools: r('#tools').width, panel: r('#gallery-panel').right,
                  right: Math.max(...cards.map((c) => c.right)), cols, cell: cards[0].width,
                  pageWidth: document.documentElement.scrollWidth};
        }""")
        assert m["header"] <= 56, (width, m)
        assert m["pageWidth"] <= width, f"no horizontal scrolling at {width} px: {m}"
        assert m["panel"] - m["right"] < 4, f"the gallery leaves no empty band on the right at {width} px: {m}"
        if width == 800:
            assert m["tools"] <= 260 and m["cols"] >= 3, m
    pg.set_viewport_size({"width": 1280, "height": 900})
    pg.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    pg.wait_for_timeout(100)
    covered = pg.evaluate("""() => {
      const caps = [...document.querySelectorAll('#gallery figcaption')];
      const last = caps[caps.length - 1].getBoundingClientRect();
      return last.bottom - document.querySelector('#message').getBoundingClientRect().top;
    }""")
    assert covered <= 0, f"the footer covers the last row's captions by {covered}px"


# --- items 12, 9, 4: live preview while painting, Execute, the header, controls from the server's state --------

def test_live_preview_while_painting_then_execute_with_a_steady_header(page):
    pg = page
    pg.click("#guide-close")
    pg.select_option("#per-page", "16")
    pg.fill("#seeds", "0-15")
    pg.press("#seeds", "Enter")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 16 images')")
    model_src = pg.get_attribute('#gallery .card[data-seed="1"] img', "src")
    pg.evaluate("() => { window.__ups = []; document.addEventListener('pointerup', () => window.__ups.push(performance.now()), true); }")
    tool(pg, "copy")
    paint(pg, 0, COPY_BOX)
    assert pg.get_attribute("#gallery", "data-live") in ("", None), "no live preview before a paste is painted"
    tool(pg, "paste")
    paint(pg, 1, PASTE_BOX)
    pg.wait_for_function("() => document.querySelectorAll('#gallery img[data-live=\"1\"]').length === 16", timeout=60_000)
    shots(pg, "02-live-preview-paste")
    # painting the context updates the preview again; the time from mouse-up to 16 decoded images is measured
    seq = pg.get_attribute("#gallery", "data-live")
    tool(pg, "context")
    paint(pg, 1, PASTE_BOX)
    paint(pg, 2, PASTE_BOX)
    pg.wait_for_function(f"""() => {{ const g = document.querySelector('#gallery');
        const imgs = [...g.querySelectorAll('img[data-live="1"]')];
        return g.dataset.live && g.dataset.live !== '{seq}' && app.live.version === app.draftVersion && imgs.length === 16 &&
               imgs.every((i) => i.complete && i.naturalWidth > 0); }}""", timeout=60_000)
    ms = pg.evaluate("() => performance.now() - window.__ups[window.__ups.length - 1]")
    (ARTIFACTS / "workflow-live-preview.json").write_text(json.dumps({"mouse_up_to_gallery_ms_upper_bound": ms,
                                                                      "server_ms": pg.evaluate("() => app.live.seconds * 1000")}))
    live = pg.get_attribute('#gallery .card[data-seed="1"] img', "src")
    assert live.startswith("data:image/png") and live != model_src
    assert "Live preview" in pg.inner_text("#gallery-note") and pg.locator(".live-tag:not([hidden])").count() == 16
    # the live image of the paste seed changed inside the paste box
    import base64

    before = image_from_png(pg.request.get(pg.url.rstrip("/") + model_src).body()).astype(float)
    after = image_from_png(base64.b64decode(live.split(",", 1)[1])).astype(float)
    y0, y1, x0, x1 = PASTE_BOX
    assert np.abs(after - before).mean(-1)[y0:y1, x0:x1].mean() > 5
    # the original view shows no preview; the edited view shows it again
    pg.check("input[name=view][value=original]")
    pg.wait_for_function("() => document.querySelector('#gallery').dataset.view === 'original'")
    assert pg.locator("img[data-live='1']").count() == 0
    pg.check("input[name=view][value=edited]")
    pg.wait_for_function("() => document.querySelectorAll('#gallery img[data-live=\"1\"]').length === 16", timeout=60_000)

    # Execute: the header keeps its height and the button its place; Cancel takes the same slot
    header = pg.evaluate("() => document.querySelector('header').getBoundingClientRect().height")
    slot = pg.evaluate("() => document.querySelector('.run-slot').getBoundingClientRect().left")
    pg.click("#execute")
    pg.wait_for_selector("#cancel:not([hidden])")
    assert pg.evaluate("() => document.querySelector('header').getBoundingClientRect().height") == header
    assert abs(pg.evaluate("() => document.querySelector('.run-slot').getBoundingClientRect().left") - slot) < 1
    assert disabled(pg, "#undo") and disabled(pg, "#save") and disabled(pg, "#search")
    wait_job(pg)
    pg.wait_for_function("() => /-e\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    pg.wait_for_selector("#edit-report:not([hidden])")
    pg.wait_for_timeout(1500)
    assert pg.locator("img[data-live='1']").count() == 0, "after Execute the gallery shows the model, not a preview"
    assert not disabled(pg, "#undo") and disabled(pg, "#redo") and not disabled(pg, "#revert")
    shots(pg, "03-executed")
    pg.click("#undo")
    pg.wait_for_function("() => document.querySelector('#history li.undone')")
    assert disabled(pg, "#undo") and not disabled(pg, "#redo") and disabled(pg, "#revert")


def test_cancel_leaves_undo_and_revert_disabled_on_an_empty_history(page):
    pg = page
    pg.click("#guide-close")
    paint_edit(pg, context_seeds=())
    open_advanced(pg)
    pg.fill("#steps", "10000")
    pg.press("#steps", "Tab")
    pg.click("#execute")
    pg.wait_for_function("() => /step [1-9]/.test(document.querySelector('#job-status').textContent)", timeout=90_000)
    pg.click("#cancel")
    wait_job(pg, "cancelled")
    assert "cancelled" in pg.inner_text("#message")
    h = pg.request.get(pg.url.rstrip("/") + "/api/history").json()
    assert h["entries"] == [] and disabled(pg, "#undo") and disabled(pg, "#revert"), "Undo and Revert follow the server"
    assert disabled(pg, "#redo") == (not h["undone"])
    assert not disabled(pg, "#execute")


# --- item 3: browsing while a job runs is queued, and the page never disagrees with its inputs ---------

def test_browsing_during_a_job_is_queued_and_runs_when_it_ends(page):
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    paint_edit(pg, context_seeds=())
    open_advanced(pg)
    pg.fill("#steps", "10000")
    pg.press("#steps", "Tab")
    pg.click("#execute")
    pg.wait_for_function("() => /step [1-9]/.test(document.querySelector('#job-status').textContent)", timeout=90_000)
    pg.fill("#seeds", "300-315")
    pg.press("#seeds", "Enter")
    pg.wait_for_selector("#gallery.stale")
    note = pg.inner_text("#gallery-note")
    assert "300-315" in note and "when the running job ends" in note
    msg = pg.inner_text("#message")
    assert "The gallery will show seeds 300-315 when the edit" in msg and "/api/" not in msg, msg
    shots(pg, "04-browsing-during-a-job")
    pg.click("#cancel")
    wait_job(pg, "cancelled")
    pg.wait_for_function("() => !document.querySelector('#gallery').classList.contains('stale')")
    shown = pg.eval_on_selector_all("#gallery .card", "els => els.map(e => Number(e.dataset.seed))")
    assert shown[:16] == list(range(300, 316)) and pg.input_value("#seeds") == "300-315"
    assert "· 16 images" in pg.inner_text("#page-info") and pg.is_hidden("#gallery-note")


def test_a_load_that_solves_updates_the_previews_when_it_ends(page, server):
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    paint_edit(pg, context_seeds=())
    pg.select_option("#save-what", "draft")
    pg.fill("#save-name", "draft-eye")
    pg.click("#save")
    pg.wait_for_selector('#saved-list li[data-name="draft-eye"]')
    assert "draft" in pg.inner_text('#saved-list li[data-name="draft-eye"] .kind')
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    pg.uncheck("#live")
    pg.click('#saved-list button.load[data-name="draft-eye"]')
    wait_job(pg)
    pg.wait_for_function("() => (document.querySelector('#copy-preview').src || '').startsWith('data:image/png')", timeout=60_000)
    pg.wait_for_function("() => (document.querySelector('#rendered-preview').src || '').startsWith('data:image/png')")
    pg.wait_for_function("() => /-e\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    assert pg.input_value("#seeds") == "1,0" and not pg.evaluate("() => document.querySelector('#gallery').classList.contains('stale')")
    assert len(history_names(pg)) == 1


# --- item 5: names, duplicates, and the whole stack saved and loaded back ---------------------------------

def test_duplicates_are_asked_about_names_stay_unique_and_the_stack_saves_and_loads(page, server):
    pg = page
    edits_dir = server[1]
    pg.click("#guide-close")
    pg.uncheck("#live")
    paint_edit(pg, context_seeds=(2,))
    pg.click("#execute")
    wait_job(pg)
    pg.wait_for_function("() => document.querySelectorAll('#history li:not(.undone)').length === 1")
    first = history_names(pg)[0]
    # History -> show: the regions come back as a draft without the old name
    pg.fill("#seeds", "20-35")
    pg.press("#seeds", "Enter")
    pg.click("#history li .show")
    pg.wait_for_function("() => document.querySelector('#message').textContent.includes('are the draft again')")
    assert pg.locator("#context-tray .tray-item").count() == 1
    # its live preview warns, before Execute, that it overlaps the applied edit
    pg.check("#live")
    pg.wait_for_function("() => document.querySelectorAll('#gallery img[data-live=\"1\"]').length > 0", timeout=60_000)
    note = pg.inner_text("#gallery-note")
    assert f"Execute runs the full solve. Warning: overlap: '{first}' and " in note and "(overlap 1.00" in note, note
    shots(pg, "05-live-overlap")
    pg.uncheck("#live")
    assert pg.input_value("#edit-name") == ""
    # executing the same draft again is asked about, not stacked silently
    pg.click("#execute")
    pg.wait_for_selector("#message #again")
    assert "applied already" in pg.inner_text("#message")
    assert len(history_names(pg)) == 1
    shots(pg, "05-duplicate-asked")
    pg.click("#message #again")
    wait_job(pg)
    pg.wait_for_function("() => document.querySelectorAll('#history li:not(.undone)').length === 2")
    names = history_names(pg)
    assert names[0] == first and names[1] == f"{first} (2)" and len(set(names)) == 2
    # the same context twice: the report ends with the overlap warning
    pg.wait_for_selector("#edit-report:not([hidden])")
    last = pg.inner_text("#edit-report").splitlines()[-1]
    assert last.startswith(f"Note: overlap: '{first}' and '{first} (2)' respond to the same keys") and "(overlap 1.00" in last
    shots(pg, "05-overlap-note")
    # save: the choices say what is saved; the whole stack is one file
    options = pg.eval_on_selector_all("#save-what option", "els => els.map(e => [e.value, e.textContent])")
    assert options[0] == ["stack", "the whole stack (2 edits, in order)"] and any(v == "last" for v, _ in options)
    pg.fill("#save-name", "two-eyes")
    pg.click("#save")
    pg.wait_for_selector('#saved-list li[data-name="two-eyes"]')
    assert "stack of 2" in pg.inner_text('#saved-list li[data-name="two-eyes"] .kind')
    assert "whole stack (2 edits" in pg.inner_text("#message")
    data = json.loads((edits_dir / "two-eyes.json").read_text())
    assert data["format"] == "model-rewrite-edit-stack" and len(data["edits"]) == 2
    assert (edits_dir / "two-eyes.safetensors").exists()
    state = pg.get_attribute("#gallery", "data-state")
    pg.fill("#seeds", "0-15")
    pg.press("#seeds", "Enter")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 16 images')")
    edited = {s: pg.request.get(pg.url.rstrip("/") + f"/api/images/{state}/{s}.png").body() for s in (0, 1, 2, 5)}
    # revert, reload, load the stack: both edits, the same images
    pg.click("#revert")
    pg.wait_for_function("() => /-base$/.test(document.querySelector('#gallery').dataset.state)")
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    pg.uncheck("#live")
    pg.click('#saved-list button.load[data-name="two-eyes"]')
    pg.wait_for_function("() => document.querySelectorAll('#history li:not(.undone)').length === 2")
    assert "stack two-eyes: 2 edits applied" in pg.inner_text("#message")
    pg.wait_for_selector("#edit-report:not([hidden])")
    report = pg.inner_text("#edit-report").splitlines()
    assert report == ["two-eyes was applied with its saved factors (not measured):", last], "it warns as its edits did"
    shots(pg, "06-stack-loaded-warning")
    pg.wait_for_function("() => /-e\\d+_\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    state = pg.get_attribute("#gallery", "data-state")
    for s, png in edited.items():
        assert pg.request.get(pg.url.rstrip("/") + f"/api/images/{state}/{s}.png").body() == png, s
    # loading it a second time is asked about
    pg.click('#saved-list button.load[data-name="two-eyes"]')
    pg.wait_for_selector("#message #again")
    assert len(history_names(pg)) == 2
    shots(pg, "06-stack-loaded")


# --- items 6, 7, 8: search results, match selection, a fixed threshold, the context's singular values ---------

def test_search_results_add_to_the_context_and_the_threshold_is_fixed(page):
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    # matches with nothing painted: an error, and the box does not stay checked
    pg.click("#show-matches")
    pg.wait_for_selector("#message.error")
    assert not pg.is_checked("#show-matches") and "needs a context" in pg.inner_text("#message")
    paint_edit(pg, context_seeds=())
    # the paste region is the context: its singular values are shown next to the rank
    pg.wait_for_function("() => document.querySelectorAll('#spectrum .bar').length > 0", timeout=60_000)
    values = json.loads(pg.get_attribute("#spectrum", "data-values"))
    assert values[0] == pytest.approx(1.0) and values == sorted(values, reverse=True)
    assert pg.locator("#spectrum .bar.used").count() == 1 and "spans" in pg.inner_text("#spectrum")
    pg.fill("#rank", "2")
    pg.press("#rank", "Tab")
    pg.wait_for_function("() => document.querySelectorAll('#spectrum .bar.used').length === 2")
    pg.fill("#rank", "1")
    pg.press("#rank", "Tab")
    # match selection: rank images by the copy region
    pg.select_option("#search-by", "copy")
    pg.fill("#search-seeds", "0-99")
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#search-results .tray-item').length === 12", timeout=60_000)
    srcs = pg.eval_on_selector_all("#search-results img", "els => els.map(e => e.src)")
    assert all(s.startswith("data:image/png") for s in srcs), "each result shows where it fires"
    labels = pg.eval_on_selector_all("#search-results .score", "els => els.map(e => e.textContent)")
    scores = [float(t.split("·")[1]) for t in labels]
    assert scores == sorted(scores, reverse=True), labels
    assert "copy region's direction" in pg.inner_text("#message")
    shots(pg, "07-search-by-copy")
    # one click adds a result to the context; the spectrum follows the new context
    pg.select_option("#search-by", "context")
    first = pg.get_attribute("#search-results .tray-item", "data-seed")
    pg.click("#search-results .tray-item button.add")
    pg.wait_for_function(f"() => app.draft.context.has({first})")
    assert pg.locator(f'#context-tray .tray-item[data-seed="{first}"]').count() == 1
    assert "added" in pg.get_attribute("#search-results .tray-item", "class")
    # the threshold of "Show matches" is the same on 64 gallery images and on the 12 results
    pg.fill("#seeds", "0-63")
    pg.press("#seeds", "Enter")
    pg.select_option("#per-page", "64")
    pg.wait_for_function("() => document.querySelectorAll('#gallery .card').length === 64")
    pg.check("#show-matches")
    pg.wait_for_function("() => app.matches && [...document.querySelectorAll('#gallery img')].every(i => i.src.startsWith('data:'))",
                         timeout=60_000)
    wide = pg.evaluate("() => app.matches.threshold")
    assert "amber" in pg.inner_text("#message") and "reference images" in pg.inner_text("#message")
    shots(pg, "08-matches")
    pg.click("#show-results")
    pg.wait_for_function("() => document.querySelectorAll('#gallery .card').length === 12")
    pg.wait_for_function("() => app.matches && app.matches.images.size === 12", timeout=60_000)
    assert pg.evaluate("() => app.matches.threshold") == wide
    assert pg.locator(".legend .swatch.match").count() == 1


# --- item 10: the keyboard alone, and axe-core --------------------------------------------------------

def test_the_tools_work_by_keyboard_only(page):
    pg = page
    kb = pg.keyboard
    kb.press("?")  # the guide closes by its key
    assert pg.is_hidden("#guide")
    # the tool radios are reachable: Tab to them, arrows choose
    pg.focus("#brush")  # the control just after the tools; Shift+Tab goes back to the checked radio
    kb.press("Shift+Tab")
    assert pg.evaluate("() => document.activeElement.name") == "tool"
    kb.press("ArrowRight")
    assert pg.evaluate("() => app.tool") == "paste" and pg.is_checked("input[name=tool][value=paste]")
    kb.press("1")
    assert pg.evaluate("() => app.tool") == "copy"
    # the skip link (the first Tab stop) leads to the gallery; Tab reaches the first image, where the arrows and
    # Space paint
    pg.reload()
    pg.wait_for_selector("body[data-ready='1']")
    kb.press("Tab")
    assert pg.evaluate("() => document.activeElement.className") == "skip"
    kb.press("Enter")
    kb.press("Tab")
    assert pg.evaluate("() => document.activeElement.closest('.card').dataset.seed") == "0"
    for _ in range(3):
        kb.press("ArrowUp")
    kb.down("Shift")
    for _ in range(4):
        kb.press("ArrowRight")
    kb.up("Shift")
    pg.wait_for_function("() => app.draft.copy && app.draft.copy.seed === 0")
    kb.press("Tab")
    assert pg.evaluate("() => document.activeElement.closest('.card').dataset.seed") == "1"
    kb.press("2")
    for _ in range(5):
        kb.press("ArrowDown")
    kb.press("Space")
    kb.press("ArrowLeft")
    kb.press("Space")
    pg.wait_for_function("() => app.draft.paste && app.draft.paste.seed === 1")
    assert not disabled(pg, "#execute")
    shots(pg, "09-keyboard-painted")
    kb.press("Control+Enter")
    wait_job(pg)
    pg.wait_for_function("() => /-e\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    # after clicking a view radio, 't' toggles at once
    pg.click("input[name=view][value=original]")
    pg.wait_for_function("() => document.querySelector('#gallery').dataset.view === 'original'")
    kb.press("t")
    pg.wait_for_function("() => document.querySelector('#gallery').dataset.view === 'edited'")
    # Import is a real button: Enter opens the file chooser
    pg.focus("#import-button")
    assert pg.evaluate("() => document.activeElement.id") == "import-button"
    edit = {"not": "an edit"}
    # Enter on the focused button clicks the hidden file input (headless Chromium here opens no chooser for a
    # click that a script forwards, so the click itself is what is checked; the file is then given to the input)
    pg.evaluate("() => { window.__importClicks = 0; document.querySelector('#import').addEventListener('click', "
                "(e) => { window.__importClicks += 1; e.preventDefault(); }); }")
    kb.press("Enter")
    pg.wait_for_function("() => window.__importClicks === 1")
    pg.set_input_files("#import", files=[{"name": "bad.json", "mimeType": "application/json",
                                          "buffer": json.dumps(edit).encode()}])
    pg.wait_for_selector("#message.error")
    assert "not a model-rewrite edit" in pg.inner_text("#message")


def test_axe_finds_no_serious_or_critical_violations(page):
    from axe_playwright_python.sync_playwright import Axe

    pg = page
    axe = Axe()
    found: dict[str, list] = {}

    def check(state: str) -> None:
        for w in WIDTHS:
            pg.set_viewport_size({"width": w, "height": 900})
            pg.wait_for_timeout(150)
            res = axe.run(pg)
            found[f"{state}-{w}"] = [{"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"]), "help": v["help"]}
                                     for v in res.response["violations"]]
        pg.set_viewport_size({"width": 1280, "height": 900})

    check("first-run")
    pg.click("#guide-close")
    pg.uncheck("#live")
    paint_edit(pg, context_seeds=(2,))
    pg.fill("#search-seeds", "0-49")
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#search-results .tray-item').length === 12", timeout=60_000)
    pg.click("#execute")
    wait_job(pg)
    pg.wait_for_selector("#edit-report:not([hidden])")
    open_advanced(pg)
    pg.fill("#steps", "")  # an invalid input, marked
    check("painted-searched-executed")
    (ARTIFACTS / "workflow-axe.json").write_text(json.dumps(found, indent=1))
    bad = {k: [v for v in vs if v["impact"] in ("serious", "critical")] for k, vs in found.items()}
    assert not any(bad.values()), bad


# --- item 11: input checks with the config's bounds ------------------------------------------------------

def test_inputs_are_checked_as_you_type_with_the_configs_bounds(page):
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    info = pg.evaluate("() => app.info.bounds")
    assert pg.get_attribute("#steps", "max") == str(info["update"]["steps"]["le"]) == "20000"
    assert pg.get_attribute("#rank", "max") == "256"
    paint_edit(pg, context_seeds=())
    assert not disabled(pg, "#execute")
    open_advanced(pg)
    for bad, words in (("", "required"), ("2.5", "whole number"), ("20001", "at most 20000"), ("-1", "at least 0")):
        pg.fill("#steps", bad)
        assert pg.get_attribute("#steps", "aria-invalid") == "true", bad
        assert words in pg.inner_text("#steps-error"), (bad, pg.inner_text("#steps-error"))
        assert disabled(pg, "#execute") and "steps" in pg.get_attribute("#execute", "title")
    pg.fill("#lr", "0")
    assert "more than 0" in pg.inner_text("#lr-error")
    pg.fill("#lr", "0.05")
    pg.fill("#steps", "150")
    assert not disabled(pg, "#execute") and pg.inner_text("#steps-error") == ""
    # seeds: a range over the gallery's bound is refused as typed, the gallery keeps what it shows and says so
    shown = pg.inner_text("#page-info")
    pg.fill("#seeds", "0-99999")
    assert "more than 4096" in pg.inner_text("#seeds-error")
    pg.press("#seeds", "Enter")
    pg.wait_for_selector("#gallery.stale")
    assert pg.inner_text("#page-info") == shown and "fix the Seeds box" in pg.inner_text("#gallery-note")
    shots(pg, "10-invalid-inputs")
    pg.fill("#seeds", "5,9-11")
    pg.press("#seeds", "Enter")
    pg.wait_for_function("() => document.querySelector('#page-info').textContent.includes('· 4 images')")
    assert not pg.evaluate("() => document.querySelector('#gallery').classList.contains('stale')")
    pg.fill("#save-name", "../up")
    assert "letters, digits" in pg.inner_text("#save-name-error") and disabled(pg, "#save")
    pg.fill("#search-seeds", "0-5000")
    assert "more than 2000" in pg.inner_text("#search-seeds-error") and disabled(pg, "#search")
    assert re.search(r"\d", pg.inner_text("#page-info"))


def test_a_refinement_that_did_nothing_is_said_under_the_report(page):
    # lr 10 with a warm start: every Adam step overshoots, so the update is the closed form; the page says so
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    paint_edit(pg)
    open_advanced(pg)
    pg.fill("#lr", "10")
    pg.fill("#steps", "4")
    pg.click("#execute")
    wait_job(pg)
    pg.wait_for_selector("#edit-report:not([hidden])")
    job = pg.request.get(pg.url.rstrip("/") + "/api/job").json()["job"]
    assert min(job["losses"][1:]) > job["losses"][0]
    lines = pg.inner_text("#edit-report").splitlines()
    assert lines[-1] == f"Note: {job['note']}" and "no Adam step improved on the closed-form start" in lines[-1], lines
    # the header gives the loss of the update kept (the best iterate, here the start), not the last step's
    assert pg.inner_text("#job-status") == f"done · best loss {min(job['losses']):.4f}"
    shots(pg, "11-refinement-note")


def test_a_search_whose_direction_fires_along_an_edge_is_warned_about(page):
    # green-hair's context (hair on top of the head) touches the top edge; its direction fires along it
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    edit = (Path(__file__).resolve().parents[1] / "examples" / "green-hair" / "edit.json").read_bytes()
    pg.set_input_files("#import", files=[{"name": "green-hair.json", "mimeType": "application/json", "buffer": edit}])
    pg.wait_for_function("() => document.querySelector('#message').textContent.startsWith('imported green-hair')")
    before = pg.get_attribute("#gallery", "data-state")
    pg.click('#saved-list button.load[data-name="green-hair"]')  # the draft takes its selections (and it is applied)
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 5")
    wait_job(pg)
    assert pg.input_value("#layer") == "b64"
    pg.fill("#search-seeds", "1000-1031")
    pg.click("#search")
    pg.wait_for_function("() => document.querySelectorAll('#search-results .tray-item').length === 12")
    pg.wait_for_selector("#message.error")
    text = pg.inner_text("#message")
    assert text.startswith("Warning: edge: ") and "top edge" in text and "best 12 of 32 images" in text, text
    # the context tray shows every context image (drawn, not blank), though the load's job held the model
    pg.wait_for_function("(s) => document.querySelector('#gallery').dataset.state !== s", arg=before)
    pg.wait_for_function("() => [...document.querySelectorAll('#context-tray canvas.thumb')].every((c) => {"
                         " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                         " for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) return true; return false; })")
    shots(pg, "12-edge-warning")


def test_overlapping_edits_are_solved_together_from_the_history_saved_and_loaded(page, server):
    # open-smile and red-lips: two rules around the mouth at b32 whose contexts overlap (0.33)
    pg = page
    pg.click("#guide-close")
    pg.uncheck("#live")
    examples = Path(__file__).resolve().parents[1] / "examples"
    names = []
    for i, example in enumerate(("open-smile", "red-lips")):
        data = (examples / example / "edit.json").read_bytes()
        names.append(json.loads(data)["name"])
        pg.set_input_files("#import", files=[{"name": f"{example}.json", "mimeType": "application/json", "buffer": data}])
        pg.wait_for_function(f"() => document.querySelector('#message').textContent.startsWith('imported {example}')")
        pg.click(f'#saved-list button.load[data-name="{example}"]')
        pg.wait_for_function(f"() => document.querySelectorAll('#history > li:not(.undone)').length === {i + 1}",
                             timeout=120_000)
        wait_job(pg)
    assert history_names(pg) == names and pg.locator("#together button").count() == 1
    button = pg.locator("#together button")
    assert button.inner_text() == "solve the 2 edits at b32 together"
    # the second load's report ends with the overlap warning, which points to the button
    pg.wait_for_function("() => document.querySelector('#edit-report').textContent.includes("
                         "'or solve them together (History: “solve together”)')")
    shots(pg, "13-solve-together-offered")
    button.click()
    # the job's end: its message and report are written together, after the history is read again
    pg.wait_for_function("() => document.querySelector('#message').textContent.startsWith('solved together:')",
                         timeout=120_000)
    wait_job(pg)
    pg.wait_for_function("() => document.querySelectorAll('#history > li:not(.undone)').length === 1")
    joint = f"joint: {names[0]} + {names[1]}"
    assert history_names(pg) == [joint] and pg.locator("#together button").count() == 0
    assert pg.locator("#history > li > .show").is_hidden()
    assert pg.inner_text("#message").startswith(f"solved together: {names[0]} + {names[1]} in ")
    report = pg.inner_text("#edit-report").splitlines()
    assert report[0] == "How the 2 edits solved together took on 16 held-out images:", report
    assert f"{names[0]}:" in report and f"{names[1]}:" in report
    assert sum(line.startswith("paste fidelity") for line in report) == 2, report  # one report each
    assert report[-1].startswith(f"Note: overlap: '{names[0]}' and '{names[1]}'") and "solved together" in report[-1]
    pg.wait_for_function("() => /-e\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    shots(pg, "13-solved-together")
    from axe_playwright_python.sync_playwright import Axe

    serious = [(v["id"], v["help"]) for v in Axe().run(pg).response["violations"] if v["impact"] in ("serious", "critical")]
    assert not serious, serious  # the joint edit's rules and their buttons too
    state = pg.get_attribute("#gallery", "data-state")
    solved = {s: pg.request.get(pg.url.rstrip("/") + f"/api/images/{state}/{s}.png").body() for s in (0, 1, 2)}
    # save: the joint edit alone (no whole-stack choice), a file of 2 rules solved together
    options = pg.eval_on_selector_all("#save-what option", "els => els.map(e => e.value)")
    assert options == ["last", "draft"], options
    pg.fill("#save-name", "smile-lips")
    pg.click("#save")
    pg.wait_for_selector('#saved-list li[data-name="smile-lips"]')
    assert pg.inner_text('#saved-list li[data-name="smile-lips"] .kind') == "2 together"
    assert json.loads((server[1] / "smile-lips.json").read_text())["format"] == "model-rewrite-multi-edit"
    # revert and load it: the joint edit at once, the same images
    pg.click("#revert")
    pg.wait_for_function("() => /-base$/.test(document.querySelector('#gallery').dataset.state)")
    pg.click('#saved-list button.load[data-name="smile-lips"]')
    pg.wait_for_function("() => document.querySelectorAll('#history > li:not(.undone)').length === 1")
    assert history_names(pg) == [joint]
    pg.wait_for_function("(s) => /-e\\d+$/.test(document.querySelector('#gallery').dataset.state)")
    state = pg.get_attribute("#gallery", "data-state")
    for s, png in solved.items():
        assert pg.request.get(pg.url.rstrip("/") + f"/api/images/{state}/{s}.png").body() == png, s
    # take red-lips out: open-smile is solved again, alone, in its place; the report and history say so
    assert pg.eval_on_selector_all("#history .members .name", "els => els.map(e => e.textContent)") == names
    # show: a rule's regions come back as the draft (red-lips: three context images)
    pg.click(f'#history .members button[aria-label="show the regions of {names[1]}"]')
    pg.wait_for_function("() => document.querySelector('#message').textContent.includes('are the draft again')")
    pg.wait_for_function("() => document.querySelectorAll('#context-tray .tray-item').length === 3")
    pg.click(f'#history .members button[aria-label="take {names[1]} out of {joint}"]')
    pg.wait_for_function("() => document.querySelector('#message').textContent.startsWith('solved again:')",
                         timeout=120_000)
    wait_job(pg)
    pg.wait_for_function(f"() => document.querySelector('#history > li > .name').textContent === 'joint: {names[0]}'")
    assert pg.inner_text("#edit-report").splitlines()[:2] == [
        "How the edit took on 16 held-out images:", f"{names[0]}:"]
    assert pg.inner_text("#message").startswith(f"solved again: {names[0]} in ")
    shots(pg, "13-taken-out")
