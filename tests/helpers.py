"""Helpers shared by the tests: masks, PNG decoding, a live `serve()` process on a free port, the flags of
Chromium, and whether the real default model is installed."""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FACE_MODEL_REASON = "the default face model's wheel is absent: pip install --no-deps gan-face-generate==1.1.1"


@contextmanager
def chromium() -> Iterator:
    """Debian's Chromium under Playwright (headless), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def served_page(browser, url: str, width: int, height: int) -> Iterator:
    """A page of the app at `url` in a fresh browser context, ready (body[data-ready]); on leaving, the
    context is closed and any JavaScript error the page raised fails the test."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']")
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def has_face_model() -> bool:
    """Whether the default face model's wheel (gan-face-generate) is installed."""
    import importlib.util

    return importlib.util.find_spec("gan_face_generate") is not None


def box_mask(res: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """A hard rectangular mask (res, res) with ones in [y0:y1, x0:x1]."""
    m = torch.zeros(res, res)
    m[y0:y1, x0:x1] = 1.0
    return m


def image_from_png(data: bytes) -> np.ndarray:
    """(H, W, C) uint8 of PNG bytes."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@contextmanager
def live_server(model: str, cache_dir: Path, edits_dir: Path, layer: str | None = None,
                timeout_s: float = 120.0) -> Iterator[str]:
    """Run `model_rewrite.server.app.serve` in a child process on a free port; yield its URL."""
    with live_server_process(model, cache_dir, edits_dir, layer, timeout_s) as (url, _):
        yield url


def peak_memory_kib(pid: int) -> int:
    """The peak resident memory (VmHWM, KiB) of process `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


@contextmanager
def live_server_process(model: str, cache_dir: Path, edits_dir: Path, layer: str | None = None,
                        timeout_s: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `model_rewrite.server.app.serve` in a child process on a free port; yield its URL and process."""
    code = ("import sys; from model_rewrite.server.app import serve; "
            f"serve({model!r}, {layer!r}, '127.0.0.1', 0, {str(cache_dir)!r}, 'cpu', edits_dir={str(edits_dir)!r})")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    err: list[str] = []
    threading.Thread(target=lambda: [err.append(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + timeout_s
        url = ""
        while not url.startswith("http://"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()}): {''.join(err)[-3000:]}")
            try:
                url = lines.get(timeout=0.2).strip()
            except queue.Empty:
                pass
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class KeysAreTheLatent(torch.nn.Module):
    """A generator whose edited layer (`body.0`, a 1x1 convolution, key axis 1) reads the latent itself, with an
    optional tail after it: its keys, linear output and values are known without running the package.

    `latent_shape` is (C_in, H, W); the weights are seeded normal draws."""

    def __init__(self, c_in: int, c_out: int, hw: tuple[int, int], tail: torch.nn.Module | None = None, seed: int = 0) -> None:
        super().__init__()
        self.latent_shape = (c_in, *hw)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1), *([tail] if tail is not None else []))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.body[0].weight.copy_(torch.randn(c_out, c_in, 1, 1, generator=g))
            self.body[0].bias.copy_(torch.randn(c_out, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks left on any module of `model`."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def open_advanced(pg) -> None:
    """Open the page's Advanced settings. A click on their summary can land elsewhere when the layout moves
    under it (images of a live preview arriving, seen once under a full test run): then it is clicked again."""
    for _ in range(3):
        if pg.is_visible("#steps"):
            return
        pg.click("#advanced > summary")
        try:
            pg.wait_for_selector("#steps", state="visible", timeout=2000)
        except Exception:  # noqa: BLE001 (playwright's TimeoutError): try the click again
            pass
    assert pg.is_visible("#steps"), "the Advanced settings did not open"
