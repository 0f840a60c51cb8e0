"""EditSession: the one Rewriter a server edits, its lock, the running job, a render cache and the saved-edits folder."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import KeyConfig, StatsConfig
from ..edits import EditSpec, Selection, factors_path, load_edit, save_edit
from ..errors import InvalidEdit, RewriteError
from ..masks import bounding_box, box_center, check_mask, paste_box, png_bytes_from_mask
from ..render import data_url, overlay, png_bytes, to_uint8
from ..report import fire_regions
from ..rewrite import LayerInfo, Rewriter
from ..search import rank_by_heat
from ..stack import StackEntry
from ..update import LowRankDelta

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_RENDER_CACHE_SIZE = 4096  # images (about 12 kB each at 64 px, plus their PNGs)
_HEAT_BATCH = 64


class SessionBusy(RewriteError):
    """The model is busy with a running edit (HTTP 409)."""


class NotFound(RewriteError):
    """A saved edit, history entry or image that does not exist (HTTP 404)."""


class NameTaken(RewriteError):
    """Saving would overwrite an existing edit file without the overwrite flag (HTTP 409)."""


class _Cancelled(Exception):
    pass


def check_save_name(name: str) -> str:
    """A safe edit-file stem: letters, digits, '_', '-', '.'; no path separators and no '..'."""
    stem = name.removesuffix(".json")
    if "/" in stem or "\\" in stem or ".." in stem or not _NAME_RE.match(stem):
        raise InvalidEdit(
            f"invalid edit name {name!r}: use 1-80 letters, digits, '_', '-' or '.', starting with a letter "
            "or digit, without path separators or '..'"
        )
    return stem


def default_layer(layers: Sequence[LayerInfo], resolution: int) -> str:
    """The layer whose key grid is closest to a quarter of the image side (b32 of the 64 px face model)."""
    return min(layers, key=lambda l: (abs(l.key_resolution - resolution / 4), -l.key_resolution)).name


@dataclass
class Job:
    """A long operation on the model (solving an edit): its progress, result and cancel flag."""

    id: int
    kind: str  # "execute" | "load"
    name: str
    state: str = "running"  # running | done | cancelled | failed
    phase: str = "starting"  # statistics | solving | applying
    step: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    error: str = ""
    entry_id: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class EditSession:
    """One Rewriter and its EditStack as served to a page.

    Every use of the model holds `_model_lock`. A running job holds it for its whole duration,
    so other model requests fail fast with SessionBusy instead of waiting; cached images are
    served without the lock. Rendered images are cached by (weights state, seed); the state
    names the active edits, so undo and redo find their images again.
    """

    def __init__(self, rewriter: Rewriter, *, layer: str | None = None, edits_dir: str | Path = "edits") -> None:
        self.rw = rewriter
        self.layers: list[LayerInfo] = rewriter.layers()
        names = [l.name for l in self.layers]
        # LayerNotFound names the choices; an alias (the authors' layer name) becomes ours
        self.default_layer = rewriter.spec(layer).name if layer is not None else default_layer(self.layers, rewriter.info.resolution)
        self.layer_names = names
        self.edits_dir = Path(edits_dir)
        self.nonce = secrets.token_hex(4)
        self.job: Job | None = None
        self._job_ids = 0
        self._model_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._files_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._png: dict[tuple[str, int], bytes] = {}
        self._dirs: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def resolution(self) -> int:
        return self.rw.info.resolution

    # --- the lock and the busy answer -----------------------------------------------------
    def running_job(self) -> Job | None:
        job = self.job
        return job if job is not None and job.state == "running" else None

    def _busy_message(self, job: Job) -> str:
        where = f"step {job.step} of {job.steps}" if job.phase == "solving" else job.phase
        return (f"busy: the edit {job.name!r} is being executed ({where}); wait for it to finish "
                "or cancel it (POST /api/job/cancel)")

    def _acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.running_job()
            if job is not None:
                raise SessionBusy(self._busy_message(job))
            if self._model_lock.acquire(timeout=0.05):
                return
            if time.monotonic() > deadline:
                raise SessionBusy("busy: the model is serving another request; try again")

    @contextmanager
    def model_access(self, timeout_s: float = 120.0) -> Iterator[Rewriter]:
        """Hold the model: SessionBusy at once while an edit runs, else wait for other requests."""
        self._acquire(timeout_s)
        try:
            yield self.rw
        finally:
            self._model_lock.release()

    # --- weights state and images -----------------------------------------------------------
    def state(self) -> str:
        """A name for the current weights: the session nonce and the ids of the active edits."""
        ids = [e.id for e in self.rw.stack.entries]
        return f"{self.nonce}-" + ("base" if not ids else "e" + "_".join(map(str, ids)))

    @property
    def base_state(self) -> str:
        return f"{self.nonce}-base"

    def _cached(self, key: tuple[str, int]) -> np.ndarray | None:
        with self._cache_lock:
            img = self._cache.get(key)
            if img is not None:
                self._cache.move_to_end(key)
            return img

    def _remember(self, key: tuple[str, int], img: np.ndarray) -> None:
        with self._cache_lock:
            self._cache[key] = img
            self._cache.move_to_end(key)
            while len(self._cache) > _RENDER_CACHE_SIZE:
                old, _ = self._cache.popitem(last=False)
                self._png.pop(old, None)

    def _render_locked(self, state: str, seeds: Sequence[int]) -> list[np.ndarray]:
        """Images (H, W, 3) uint8 of `seeds` in `state` (current or base); the model lock is held."""
        out: dict[int, np.ndarray] = {}
        missing = []
        for s in dict.fromkeys(seeds):
            img = self._cached((state, s))
            if img is None:
                missing.append(s)
            else:
                out[s] = img
        if missing:
            if state == self.state():
                imgs = to_uint8(self.rw.sample(missing))
            elif state == self.base_state:
                imgs = to_uint8(self.rw.sample_original(missing))
            else:
                raise NotFound(f"images of weights state {state!r} are no longer available; reload the gallery")
            for s, img in zip(missing, imgs):
                self._remember((state, s), img)
                out[s] = img
        return [out[s] for s in seeds]

    def render(self, seeds: Sequence[int], which: str = "edited") -> tuple[str, list[np.ndarray]]:
        """(state, images) of `seeds` from the current (edited) or original weights."""
        with self.model_access():
            state = self.state() if which == "edited" else self.base_state
            return state, self._render_locked(state, seeds)

    def image_png(self, state: str, seed: int) -> bytes:
        """PNG of one image of a weights state; from the cache, else rendered if the state is live."""
        key = (state, seed)
        with self._cache_lock:
            png = self._png.get(key)
        if png is not None:
            return png
        img = self._cached(key)
        if img is None:
            if not state.startswith(self.nonce + "-"):
                raise NotFound(f"images of weights state {state!r} are from another server run; reload the page")
            with self.model_access():
                img = self._render_locked(state, [seed])[0]
        png = png_bytes(img)
        with self._cache_lock:
            self._png[key] = png
        return png

    def prerender(self, seeds: Sequence[int], which: str) -> str:
        """Render (batched) what a gallery page shows; returns the current state."""
        with self.model_access():
            state = self.state()
            if which in ("edited", "both"):
                self._render_locked(state, seeds)
            if which in ("original", "both"):
                self._render_locked(self.base_state, seeds)
            return state

    # --- selections, previews and context search -------------------------------------------
    def check_selection(self, sel: Selection, what: str) -> Selection:
        return Selection(sel.seed, check_mask(sel.mask, self.resolution, what))

    def check_edit(self, spec: EditSpec) -> EditSpec:
        """An edit this session can run: this model, an editable layer, masks at image size."""
        self.rw.spec(spec.layer)  # LayerNotFound (400) names the choices
        return self.rw.check_edit(spec)

    def preview(self, copy: Selection, paste: Selection | None) -> dict:
        """What the copy takes (RGBA crop) and, with a paste, the pixel composite and its box."""
        copy = self.check_selection(copy, "copy")
        paste = self.check_selection(paste, "paste") if paste is not None else None
        seeds = [copy.seed] + ([paste.seed] if paste is not None else [])
        _, imgs = self.render(seeds)
        alpha = copy.mask.numpy()
        cy0, cy1, cx0, cx1 = bounding_box(copy.mask, 1e-3)
        crop = np.concatenate([imgs[0], (alpha[..., None] * 255).round().astype(np.uint8)], -1)[cy0:cy1, cx0:cx1]
        out = {"copy": data_url(png_bytes(crop)), "copy_box": [cy0, cy1, cx0, cx1], "composite": None, "paste_box": None}
        if paste is not None:
            res = self.resolution
            y0, y1, x0, x1 = paste_box(box_center(bounding_box(paste.mask, 1e-3)), cy1 - cy0, cx1 - cx0, (res, res))
            a = alpha[cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0, None]
            comp = imgs[1].astype(np.float32)
            src = imgs[0][cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0].astype(np.float32)
            comp[y0:y1, x0:x1] = (1 - a) * comp[y0:y1, x0:x1] + a * src
            out["composite"] = data_url(png_bytes(comp.round().clip(0, 255).astype(np.uint8)))
            out["paste_box"] = [y0, y1, x0, x1]
        return out

    def _directions(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig) -> torch.Tensor:
        """Context directions (r, C_in) from `Rewriter.directions`, cached by weights state, layer, configs
        and masks. Lock held."""
        key = (self.state(), layer, keys, stats,
               tuple((s.seed, hashlib.sha1(png_bytes_from_mask(s.mask)).hexdigest()) for s in context))
        if key not in self._dirs:
            self._dirs[key] = self.rw.directions(layer, list(context), keys, stats)
            while len(self._dirs) > 32:
                self._dirs.popitem(last=False)
        return self._dirs[key]

    def _heat_locked(self, layer: str, dirs: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return torch.cat([self.rw.heat(layer, dirs, seeds[i : i + _HEAT_BATCH]) for i in range(0, len(seeds), _HEAT_BATCH)])

    def search(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
               top_k: int) -> tuple[str, list[tuple[int, float]]]:
        """The `top_k` of `seeds` whose max heat along the first context direction is highest."""
        context = [self.check_selection(s, f"context[{i}]") for i, s in enumerate(context)]
        with self.model_access():
            self.rw.spec(layer)
            dirs = self._directions(layer, context, keys, stats)
            order, scores = rank_by_heat(self._heat_locked(layer, dirs, seeds))
            best = [(int(seeds[int(i)]), float(s)) for i, s in zip(order[:top_k], scores[:top_k])]
            state = self.state()
            self._render_locked(state, [s for s, _ in best])
            return state, best

    def matches(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
                quantile: float, which: str = "edited") -> tuple[float, list[tuple[int, bytes, float]]]:
        """Where the context fires on `seeds`: locations above the `quantile` of their heat, as overlays."""
        context = [self.check_selection(s, f"context[{i}]") for i, s in enumerate(context)]
        with self.model_access():
            self.rw.spec(layer)
            dirs = self._directions(layer, context, keys, stats)
            heats = self._heat_locked(layer, dirs, seeds)  # (N, Hk, Wk)
            state = self.state() if which == "edited" else self.base_state
            imgs = np.stack(self._render_locked(state, seeds))
        regions, threshold = fire_regions(heats, self.resolution, quantile)  # (N, H, W)
        tinted = overlay(imgs, regions)
        return threshold, [(s, png_bytes(t), float((h > threshold).float().mean())) for s, t, h in zip(seeds, tinted, heats)]

    # --- jobs -----------------------------------------------------------------------------
    def start_job(self, spec: EditSpec, kind: str = "execute") -> Job:
        """Solve `spec` in a background thread and push it; SessionBusy if a job runs already."""
        with self._start_lock:
            job = self.running_job()
            if job is not None:
                raise SessionBusy(f"an edit is already being executed ({job.name!r}); wait for it or cancel it")
            self._acquire(timeout_s=60.0)
            self._job_ids += 1
            job = Job(self._job_ids, kind, spec.name or "edit")
            self.job = job
        threading.Thread(target=self._run_job, args=(job, spec), name=f"edit-job-{job.id}", daemon=True).start()
        return job

    def _run_job(self, job: Job, spec: EditSpec) -> None:
        try:
            def stats_progress(done: int, total: int) -> None:
                job.step, job.steps = done, total
                if job.cancel.is_set():
                    raise _Cancelled

            job.phase = "statistics"
            self.rw.stats(spec.layer, spec.stats, progress=stats_progress)
            job.phase, job.step = "solving", 0
            job.steps = spec.update.steps if spec.update.method == "optimize" else 0

            def on_step(step: int, loss: float) -> bool:
                job.step = step
                job.losses.append(loss)
                return job.cancel.is_set()

            result = self.rw.solve(spec, on_step=on_step)
            if result.cancelled or job.cancel.is_set():
                job.state = "cancelled"
            else:
                job.phase = "applying"
                job.losses = list(result.losses) or [result.goal_loss]  # the full curve (same prefix)
                entry = self.rw.stack.push(result.delta, spec.name, spec)
                job.entry_id = entry.id
                job.state = "done"
        except _Cancelled:
            job.state = "cancelled"
        except RewriteError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # a bug: report it in the page instead of leaving the job hanging
            log.exception("edit job %d failed", job.id)
            job.error, job.state = f"internal error: {type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished = time.monotonic()
            self._model_lock.release()

    def cancel(self) -> Job | None:
        job = self.running_job()
        if job is not None:
            job.cancel.set()
        return job

    # --- history --------------------------------------------------------------------------
    def history(self) -> tuple[str, list[StackEntry], list[StackEntry]]:
        stack = self.rw.stack
        return self.state(), list(stack.entries), list(reversed(stack.undone))

    def undo(self) -> StackEntry:
        with self.model_access():
            entry = self.rw.stack.undo()
        if entry is None:
            raise NotFound("nothing to undo: no edit is applied")
        return entry

    def redo(self) -> StackEntry:
        with self.model_access():
            entry = self.rw.stack.redo()
        if entry is None:
            raise NotFound("nothing to redo")
        return entry

    def remove(self, entry_id: int) -> StackEntry:
        with self.model_access():
            try:
                return self.rw.stack.remove(entry_id)
            except KeyError:
                raise NotFound(f"no applied edit has id {entry_id}") from None

    def revert_all(self) -> None:
        with self.model_access():
            self.rw.stack.revert_all()

    def apply_loaded(self, spec: EditSpec, delta: LowRankDelta) -> StackEntry:
        with self.model_access():
            return self.rw.apply(spec, delta)

    # --- saved edits ----------------------------------------------------------------------
    def edit_path(self, name: str) -> Path:
        return self.edits_dir / f"{check_save_name(name)}.json"

    def save(self, name: str, *, overwrite: bool = False, entry_id: int | None = None, spec: EditSpec | None = None) -> Path:
        """Write an applied edit (spec + factors) or a draft (spec only) to the edits folder."""
        path = self.edit_path(name)
        delta = None
        if spec is None:
            entries = list(self.rw.stack.entries)
            if not entries:
                raise NotFound("nothing to save: apply an edit first (or save a draft)")
            if entry_id is None:
                entry = entries[-1]
            else:
                found = [e for e in entries if e.id == entry_id]
                if not found:
                    raise NotFound(f"no applied edit has id {entry_id}")
                entry = found[0]
            if entry.spec is None:
                raise InvalidEdit(f"edit {entry.name!r} has no spec to save")
            spec, delta = entry.spec, entry.delta
        else:
            self.check_edit(spec)
        with self._files_lock:
            fpath = factors_path(path)
            if (path.exists() or fpath.exists()) and not overwrite:
                raise NameTaken(f"an edit named {path.stem!r} exists already; choose another name or save with overwrite")
            if delta is None and fpath.exists():
                fpath.unlink()  # a draft replacing a solved edit must not inherit its factors
            return save_edit(path, spec, delta)

    def import_edit(self, name: str, data: dict, *, overwrite: bool = False) -> Path:
        """Validate an edit file's JSON and store it (without factors) under `name`."""
        spec = self.rw.check_edit(EditSpec.from_dict(data))
        return self.save(name, overwrite=overwrite, spec=spec)

    def saved_edits(self) -> list[dict]:
        """The edit files in the edits folder, newest first, each with whether it fits this model."""
        out = []
        if not self.edits_dir.is_dir():
            return out
        for path in self.edits_dir.glob("*.json"):
            item = {"name": path.stem, "layer": "", "model": "", "has_factors": factors_path(path).exists(),
                    "compatible": False, "error": "", "modified": path.stat().st_mtime}
            try:
                spec, _ = load_edit(path)
                item.update(layer=spec.layer, model=spec.model)
                self.rw.check_edit(spec)
                item["compatible"] = True
            except RewriteError as exc:
                item["error"] = str(exc)
            out.append(item)
        return sorted(out, key=lambda d: -d["modified"])

    def read_edit(self, name: str) -> tuple[EditSpec, LowRankDelta | None]:
        path = self.edit_path(name)
        if not path.exists():
            raise NotFound(f"no saved edit named {path.stem!r} in {self.edits_dir}")
        return load_edit(path)

    def load(self, name: str, apply: bool = True) -> tuple[EditSpec, StackEntry | None, Job | None]:
        """Read a saved edit; with `apply`, push it (its factors) or start solving it (no factors)."""
        spec, delta = self.read_edit(name)
        self.check_edit(spec)
        if not apply:
            return spec, None, None
        if delta is not None:
            return spec, self.apply_loaded(spec, delta), None
        return spec, None, self.start_job(spec, kind="load")

    # --- export ---------------------------------------------------------------------------
    def export_bytes(self) -> bytes:
        """The edited generator as safetensors, with the applied edits in its metadata."""
        from ..export import export_model

        with self.model_access(), tempfile.TemporaryDirectory() as tmp:
            edits = [e.spec.to_dict() if e.spec is not None else {"name": e.name} for e in self.rw.stack.entries]
            path = export_model(self.rw.model, self.rw.info, Path(tmp) / "model.safetensors", edits=edits)
            return path.read_bytes()
