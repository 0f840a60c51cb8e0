"""EditSession: one Rewriter as the web app serves it, tying together the model lock and jobs (jobs.py),
the image cache and previews (rendering.py), context search (context.py) and saved edits (storage.py)."""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import KeyConfig, StatsConfig
from ..edit_stack import is_edit_stack, stack_from_dict
from ..edits import EditSpec, Selection
from ..errors import InvalidEdit
from ..joint import edit_content
from ..multiedit import SolvedGroup, group_from_entry, is_multi_edit, multi_edit_from_dict
from ..masks import check_mask
from ..render import data_url, png_bytes, to_uint8
from ..rewrite import LayerInfo, Rewriter
from ..stack import StackEntry, member_names
from ..update import LowRankDelta
from .context import ContextFinder
from .errors import DuplicateEdit, NotFound
from .jobs import (Job, ModelLock, overlap_notes, push_all, rules_of, solve_and_push, solve_joint_batch, solve_together,
                   suggest_layers, take_out)
from .rendering import Renderer, copy_preview
from .storage import EditFolder

# The held-out images an executed edit is measured on: those of `model-rewrite apply` (--seed 1000 --samples 16).
REPORT_SEEDS = tuple(range(1000, 1016))
SPECTRUM_SHOWN = 16  # singular values of a context reported to the page
LIVE_WAIT_S = 60.0  # a live preview waits this long for other requests (the first collects statistics; never for a job: 409 at once)


def unique_name(name: str, taken: Sequence[str]) -> str:
    """`name`, or `base (2)`, `base (3)`, ... (base: the name without such a number): the first not in `taken`."""
    if name not in taken:
        return name
    base, n = re.sub(r" \(\d+\)$", "", name), 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


def default_layer(layers: Sequence[LayerInfo], resolution: int) -> str:
    """The layer whose key grid is closest to a quarter of the image side (b32 of the 64 px face model)."""
    return min(layers, key=lambda l: (abs(l.key_resolution - resolution / 4), -l.key_resolution)).name


class EditSession:
    """One Rewriter and its EditStack as served to a page.

    Every use of the model holds the session's ModelLock. A running job holds it for its whole
    duration, so other model requests fail fast with SessionBusy instead of waiting; cached images
    are served without the lock. An executed edit is measured on `report_seeds` inside its job.
    """

    def __init__(self, rewriter: Rewriter, *, layer: str | None = None, edits_dir: str | Path = "edits",
                 report_seeds: Sequence[int] = REPORT_SEEDS) -> None:
        self.rw = rewriter
        rewriter.keep_observations = True  # live previews re-solve on the same few images
        self.layers: list[LayerInfo] = rewriter.layers()
        self.layer_names = [l.name for l in self.layers]
        # LayerNotFound names the choices; an alias (the authors' layer name) becomes ours
        self.default_layer = rewriter.spec(layer).name if layer is not None else default_layer(self.layers, rewriter.info.resolution)
        self.nonce = secrets.token_hex(4)
        self.report_seeds = tuple(report_seeds)
        self.lock = ModelLock()
        self.renderer = Renderer(rewriter, self.lock, self.nonce)
        self.context = ContextFinder(rewriter, self.renderer)
        self.folder = EditFolder(edits_dir, rewriter.check_edit, max_side=rewriter.info.resolution)

    @property
    def resolution(self) -> int:
        return self.rw.info.resolution

    @property
    def edits_dir(self) -> Path:
        return self.folder.path

    @property
    def job(self) -> Job | None:
        """The latest job, running or finished."""
        return self.lock.job

    @contextmanager
    def model_access(self, timeout_s: float = 120.0) -> Iterator[Rewriter]:
        """Hold the model: SessionBusy at once while an edit runs, else wait for other requests."""
        with self.lock.held(timeout_s):
            yield self.rw

    # --- weights state and images -----------------------------------------------------------
    def state(self) -> str:
        """A name for the current weights: the session nonce and the ids of the active edits."""
        return self.renderer.state()

    @property
    def base_state(self) -> str:
        return self.renderer.base_state

    def render(self, seeds: Sequence[int], which: str = "edited") -> tuple[str, list[np.ndarray]]:
        return self.renderer.render(seeds, which)

    def image_png(self, state: str, seed: int) -> bytes:
        return self.renderer.image_png(state, seed)

    def prerender(self, seeds: Sequence[int], which: str) -> str:
        return self.renderer.prerender(seeds, which)

    # --- selections, previews and context search -------------------------------------------
    def check_selection(self, sel: Selection, what: str) -> Selection:
        return Selection(sel.seed, check_mask(sel.mask, self.resolution, what))

    def check_edit(self, spec: EditSpec) -> EditSpec:
        """An edit this session can run: this model, an editable layer, masks at image size."""
        self.rw.spec(spec.layer)  # LayerNotFound (400) names the choices
        return self.rw.check_edit(spec)

    def preview(self, copy: Selection, paste: Selection | None, layer: str | None = None) -> dict[str, Any]:
        """What the copy takes (RGBA crop) and, with a paste, the pixel composite and its box; with a layer too,
        the goal as the model will draw it there (`Rewriter.render_goal`, on the current weights)."""
        copy = self.check_selection(copy, "copy")
        if paste is None:
            _, (copy_image,) = self.render([copy.seed])
            return copy_preview(copy_image, copy.mask)
        paste = self.check_selection(paste, "paste")
        _, (copy_image, paste_image) = self.render([copy.seed, paste.seed])
        out = copy_preview(copy_image, copy.mask, paste_image, paste.mask)
        if layer is not None:
            spec = self.rw.new_edit(self.rw.spec(layer).name, paste=paste, copy=copy)
            with self.lock.held():
                rendered = self.rw.render_goal(spec)
            out["rendered"] = data_url(png_bytes(to_uint8(rendered[None])[0]))
        return out

    def search(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
               top_k: int, quantile: float = 0.98) -> tuple[str, float, list[tuple[int, float, bytes, bytes, float]], str]:
        """The `top_k` of `seeds` whose max heat along the first context direction is highest, with where each
        fires (above the `quantile` of the heat on the fixed reference images), and a warning ("" if none)."""
        context = [self.check_selection(s, f"context[{i}]") for i, s in enumerate(context)]
        return self.context.search(layer, context, keys, stats, seeds, top_k, quantile)

    def spectrum(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig,
                 cutoff: float) -> tuple[list[float], int, int]:
        """The first SPECTRUM_SHOWN singular values (relative to the largest) of the context's whitened keys, how
        many keys, and how many of all the values are at least `cutoff`."""
        context = [self.check_selection(s, f"context[{i}]") for i, s in enumerate(context)]
        with self.lock.held():
            values, count = self.rw.context_spectrum(layer, context, keys, stats)
        return [float(v) for v in values[:SPECTRUM_SHOWN]], count, int((values >= cutoff).sum())

    def live_preview(self, spec: EditSpec, seeds: Sequence[int]) -> tuple[list[np.ndarray], float, str]:
        """Images `seeds` (H, W, 3) uint8 with `spec` solved in closed form (no optimisation) and applied only
        while they render: the stack, its redo list and the weights are left exactly as they were. Also the
        warnings Execute would give about overlaps with the applied edits (one a line)."""
        t0 = time.perf_counter()
        closed = replace(spec, update=replace(spec.update, method="closed_form"))
        with self.lock.held(timeout_s=LIVE_WAIT_S):
            delta = self.rw.solve(closed).delta
            with self.rw.stack.trial():
                entry = self.rw.stack.push(delta, spec.name or "the draft", closed)
                images = to_uint8(self.rw.sample(list(seeds)))
                note = "\n".join(overlap_notes(self.rw, [entry.id]))  # the solve has the statistics
        return list(images), time.perf_counter() - t0, note

    def matches(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig, seeds: Sequence[int],
                quantile: float, which: str = "edited") -> tuple[float, list[tuple[int, bytes, float]]]:
        """Where the context fires on `seeds`: locations above the `quantile` of their heat, as overlays."""
        context = [self.check_selection(s, f"context[{i}]") for i, s in enumerate(context)]
        return self.context.matches(layer, context, keys, stats, seeds, quantile, which)

    # --- jobs -----------------------------------------------------------------------------
    def running_job(self) -> Job | None:
        return self.lock.running_job()

    def start_job(self, spec: EditSpec, kind: str = "execute", again: bool = False) -> Job:
        """Solve `spec` in a background thread, push it and measure it; SessionBusy if a job runs already,
        DuplicateEdit if the same edit is applied already (unless `again`). Its name is made unique in the
        history ("name (2)")."""
        spec = self._fresh([spec], again)[0]
        return self.lock.start(kind, spec.name or "edit", partial(solve_and_push, self.rw, spec, self.report_seeds))

    def _fresh(self, specs: Sequence[EditSpec], again: bool) -> list[EditSpec]:
        """`specs` with names unique in the history; DuplicateEdit if one is applied already (unless `again`)."""
        entries = list(self.rw.stack.entries)
        if not again:
            for spec in specs:
                for e in entries:
                    for rule in e.rules:
                        if edit_content(spec) == edit_content(rule):
                            raise DuplicateEdit(f"this edit is applied already (as {e.name!r}); applying it again "
                                                "would count it twice. Undo or remove it first, or apply it again on purpose")
        taken, out = [e.name for e in entries], []
        for spec in specs:
            spec = replace(spec, name=unique_name(spec.name or "edit", taken))
            taken.append(spec.name)
            out.append(spec)
        return out

    def start_joint(self, layer: str) -> Job:
        """Solve every active edit at `layer` again, together (jobs.solve_together), in a background job. The
        rules are checked first (InvalidEdit at once: fewer than two, or settings a joint solve cannot share)."""
        from ..joint import check_batch, check_group

        param = self.rw.spec(layer).param_path  # an unknown layer is refused here
        entries = [e for e in self.rw.stack.entries if e.delta.param_path == param]
        specs = [spec for e in entries for spec in rules_of(e)]
        if len(specs) < 2:
            raise InvalidEdit(f"solving together needs two or more applied edits at layer {layer}; it has {len(specs)}")
        check_group(check_batch(specs))
        return self.lock.start("joint", " + ".join(s.name or "edit" for s in specs),
                               partial(solve_together, self.rw, [e.id for e in entries], self.report_seeds))

    def start_take_out(self, entry_id: int, member: int) -> Job | None:
        """Take rule `member` out of the joint edit `entry_id`: the others are solved again together in a job
        (jobs.take_out); its only rule: the edit is removed at once (None)."""
        entry = next((e for e in self.rw.stack.entries if e.id == entry_id), None)
        if entry is None:
            raise NotFound(f"no applied edit has id {entry_id}")
        if not entry.members:
            raise InvalidEdit(f"edit {entry.name!r} was not solved together with others; remove it instead")
        if not 0 <= member < len(entry.members):
            raise InvalidEdit(f"edit {entry.name!r} has rules 0..{len(entry.members) - 1}, not {member}")
        rest = [n for i, n in enumerate(member_names(entry.members)) if i != member]
        if not rest:
            self.remove(entry_id)
            return None
        return self.lock.start("joint", " + ".join(rest), partial(take_out, self.rw, entry_id, member, self.report_seeds))

    def start_suggest(self, spec: EditSpec) -> Job:
        """Try `spec` at every layer and ranks 1, 2, 4 in a background job (see `Rewriter.suggest`)."""
        return self.lock.start("suggest", spec.name or "edit", partial(suggest_layers, self.rw, spec, self.report_seeds))

    def cancel(self) -> Job | None:
        return self.lock.cancel()

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
        return self.folder.file(name)

    def save(self, name: str, *, overwrite: bool = False, entry_id: int | None = None, spec: EditSpec | None = None,
             stack: bool = False) -> Path:
        """Write the whole active stack (`stack`: an edit-stack file with every edit's factors), an applied edit
        (spec + factors; the last one unless `entry_id`) or a draft (spec only)."""
        self.folder.file(name)  # an unsafe name is refused before anything else
        if stack:
            entries = list(self.rw.stack.entries)
            if not entries:
                raise NotFound("nothing to save: no edit is applied")
            for e in entries:
                if e.members:
                    raise InvalidEdit(f"the stack holds {e.name!r}, edits solved together, which an edit-stack file "
                                      "cannot hold: save the last edit alone (a joint edit is saved with its rules and "
                                      "joint factors), or remove it from the stack first")
                if e.spec is None:
                    raise InvalidEdit(f"applied edit {e.name!r} has no spec to save")
            return self.folder.write_stack(name, [(e.spec, e.delta) for e in entries], overwrite=overwrite)  # type: ignore[misc]
        if spec is not None:
            return self.folder.write(name, self.check_edit(spec), None, overwrite=overwrite)
        entry = self._applied(entry_id)
        if entry.members:
            return self.folder.write_joint(name, [m.spec for m in entry.members], group_from_entry(entry),
                                           overwrite=overwrite)
        if entry.spec is None:
            raise InvalidEdit(f"edit {entry.name!r} has no spec to save")
        return self.folder.write(name, entry.spec, entry.delta, overwrite=overwrite)

    def _applied(self, entry_id: int | None) -> StackEntry:
        """Applied edit `entry_id` (default: the last one)."""
        entries = list(self.rw.stack.entries)
        if not entries:
            raise NotFound("nothing to save: apply an edit first (or save a draft)")
        found = [e for e in entries if e.id == entry_id] if entry_id is not None else entries[-1:]
        if not found:
            raise NotFound(f"no applied edit has id {entry_id}")
        return found[0]

    def import_edit(self, name: str, data: dict[str, Any], *, overwrite: bool = False) -> Path:
        """Validate an edit file's (edit-stack or multi-edit file's) JSON and store it (without factors) under `name`."""
        if is_edit_stack(data):
            specs = [self.check_edit(spec) for spec in stack_from_dict(data, max_side=self.resolution)]
            self.folder.file(name)
            return self.folder.write_stack(name, [(spec, None) for spec in specs], overwrite=overwrite)
        if is_multi_edit(data):
            specs = [self.check_edit(spec) for spec in multi_edit_from_dict(data, max_side=self.resolution)[0]]
            return self.folder.write_joint(name, specs, None, overwrite=overwrite)
        spec = self.rw.check_edit(EditSpec.from_dict(data, max_side=self.resolution))
        return self.save(name, overwrite=overwrite, spec=spec)

    def saved_edits(self) -> list[dict[str, Any]]:
        """The edit files in the edits folder, newest first, each with whether it fits this model."""
        return self.folder.listing()

    def read_edit(self, name: str) -> list[tuple[EditSpec, LowRankDelta | None]]:
        """The edits of saved file `name` (one, or a stack's in order) with their factors (or None)."""
        return self.folder.read(name)

    def load(self, name: str, apply: bool = True, again: bool = False) -> tuple[list[EditSpec], list[StackEntry], Job | None, str]:
        """Read a saved edit or stack; with `apply`, push its edits in order at once (all have factors) or start a
        job solving those without. DuplicateEdit if one is applied already (unless `again`); names are made
        unique in the history. Returns (specs, entries pushed at once, job, warnings about the entries pushed
        at once: one a line, as a job's note)."""
        joint = self.folder.read_joint(name)
        if joint is not None:
            return self._load_joint(name, *joint, apply=apply, again=again)
        edits = self.read_edit(name)
        specs = [self.check_edit(spec) for spec, _ in edits]
        if not apply:
            return specs, [], None, ""
        specs = self._fresh(specs, again)
        edits = [(spec, delta) for spec, (_, delta) in zip(specs, edits)]
        if len(edits) == 1 and edits[0][1] is None:
            job = self.lock.start("load", specs[0].name, partial(solve_and_push, self.rw, specs[0], self.report_seeds))
            return specs, [], job, ""
        if any(delta is None for _, delta in edits):
            return specs, [], self.lock.start("load", name, partial(push_all, self.rw, edits, self.report_seeds)), ""
        with self.model_access():
            pushed: list[StackEntry] = []
            try:
                for spec, delta in edits:
                    pushed.append(self.rw.apply(spec, delta))
            except BaseException:
                for entry in reversed(pushed):
                    self.rw.stack.remove(entry.id)
                raise
            note = "\n".join(overlap_notes(self.rw, [e.id for e in pushed], compute_stats=False))  # no waiting
        return specs, pushed, None, note

    def _load_joint(self, name: str, specs: list[EditSpec], groups: list[SolvedGroup] | None, *, apply: bool,
                    again: bool) -> tuple[list[EditSpec], list[StackEntry], Job | None, str]:
        """`load` of a multi-edit file: its rules pushed as one joint entry per layer, at once with the saved
        joint factors, else solved together in a job (all stacked at first, then solved again jointly)."""
        specs = [self.check_edit(spec) for spec in specs]
        if not apply:
            return specs, [], None, ""
        self._fresh(specs, again)  # refuses rules applied already; a joint entry's names are the file's
        if groups is not None:
            with self.model_access():
                pushed = self.rw.apply_many(specs, groups)
            return specs, pushed, None, ""
        return specs, [], self.lock.start("load", name, partial(solve_joint_batch, self.rw, specs, self.report_seeds)), ""

    # --- export ---------------------------------------------------------------------------
    def export_bytes(self) -> bytes:
        """The edited generator as safetensors, with the applied edits in its metadata."""
        from ..export import export_model

        with self.model_access(), tempfile.TemporaryDirectory() as tmp:
            edits = [e.spec.to_dict() if e.spec is not None else  # an edit solved together: its rules
                     {"name": e.name, "members": [m.spec.to_dict() for m in e.members]} for e in self.rw.stack.entries]
            path = export_model(self.rw.model, self.rw.info, Path(tmp) / "model.safetensors", edits=edits)
            return path.read_bytes()
