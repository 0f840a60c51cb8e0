"""Solving, applying and measuring edits on held-out images, and writing what `model-rewrite apply` writes:
each edit file (with its solved factors), a before / where it fires / after grid, report.json and, unless
told otherwise, the edited weights. Used by the `apply` and `replay-paper` commands."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import RenderConfig
from .edits import EditSpec
from .update import LowRankDelta

log = logging.getLogger("model_rewrite")


class Progress:
    """A tqdm bar driven by (done, total) callbacks; none with `quiet`. The bar appears on the first
    callback, so nothing is drawn when the work is skipped (statistics read from the cache)."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:  # the first batch is the starting point, so the rate counts from here
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, total=total, initial=done, unit="img", leave=False, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def solve_with_progress(rw: Any, spec: EditSpec, quiet: bool):
    """`rw.solve(spec)` with a progress bar over the optimisation steps (none with `quiet`)."""
    from tqdm import tqdm

    steps = spec.update.planned_steps
    bar = None if quiet or not steps else tqdm(total=steps, desc="solve", leave=False, file=sys.stderr)

    def on_step(step: int, loss: float) -> bool:
        if bar is not None:  # update() redraws at most every `mininterval` (0.1 s), unlike refresh()
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(step - bar.n)
        return False

    try:
        return rw.solve(spec, on_step)
    finally:
        if bar is not None:
            bar.close()


def stats_with_progress(rw: Any, spec: EditSpec, quiet: bool) -> None:
    """Collect (or read from the cache) the statistics an edit needs, with a progress bar."""
    bar = Progress(f"stats {spec.layer}", quiet)
    try:
        rw.stats(spec.layer, spec.stats, progress=bar)
    finally:
        bar.close()


def apply_edits(rw: Any, edits: Sequence[tuple[Path, EditSpec, LowRankDelta | None]], seeds: Sequence[int], out: Path, *,
                render: RenderConfig = RenderConfig(), quiet: bool = False, scale: int = 2, save_weights: bool = True) -> dict:
    """Apply checked edits in order on `rw` (solving those without factors) and write under `out`: each edit
    (`edit.json` + factors, or `<stem>.json` when there are several), its grid and report.json (returned).
    The report measures each edit on the images `seeds` (report.measure_edit, and quality.quality_report under
    "quality"); `save_weights` also exports the edited model as `model.safetensors`."""
    from .cache import atomic_write_bytes, json_bytes
    from .edits import save_edit
    from .interference import stack_overlaps
    from .render import image_grid, overlay, save_png, to_uint8
    from .quality import quality_report
    from .report import measure_edit

    seeds = list(seeds)
    before = rw.sample(seeds)
    reports = []
    for path, spec, delta in edits:
        overlap = sorted(set(spec.selection_seeds) & set(seeds))
        if overlap:
            log.warning("held-out seeds %s are also used by the edit's selections", overlap)
        stats_with_progress(rw, spec, quiet)
        t0 = time.perf_counter()
        info: dict[str, Any] = {"edit": str(path)}
        if delta is None:
            result = solve_with_progress(rw, spec, quiet)
            delta = result.delta
            info.update(solve_seconds=round(result.seconds, 3), closed_form_loss=result.closed_form_loss,
                        goal_loss=result.goal_loss, steps=len(result.losses))
        else:
            info.update(solve_seconds=0.0, reused_factors=True)
        entry = rw.apply(spec, delta)
        found = stack_overlaps(rw, entry.id)  # with the edits applied before it
        info["overlaps"] = [o.to_dict() for o in found]
        for o in found:
            if o.warns:
                log.warning(o.warning(joint=False))
        m = measure_edit(rw, entry.id, seeds, render)
        info.update(m.report.to_dict(), seconds=round(time.perf_counter() - t0, 3))
        info.pop("heldout_seeds")
        quality = quality_report(rw, entry.id, seeds, render)
        info["quality"] = {k: v for k, v in quality.to_dict().items() if k not in ("heldout_seeds", *m.report.change.to_dict())}
        reports.append(info)
        stem = path.stem if len(edits) > 1 else "edit"
        save_edit(out / f"{stem}.json", spec, delta)
        rows = [to_uint8(m.before), overlay(to_uint8(m.before), m.regions), to_uint8(m.after)]  # before, where it fires, after
        save_png(image_grid(rows, scale=scale), out / (f"{stem}-grid.png" if len(edits) > 1 else "grid.png"))
    summary: dict[str, Any] = {"model": rw.info.model_id, "fingerprint": rw.info.fingerprint, "latents": rw.latent_scheme,
                               "heldout_seeds": seeds, "edits": reports}
    if reports:
        summary.update({k: reports[-1][k] for k in ("inside_change", "outside_change", "ratio")})
    if save_weights:
        from .export import export_model

        summary["weights"] = str(export_model(rw.model, rw.info, out / "model.safetensors", [r["edit"] for r in reports]))
    summary["all_edits_mean_change"] = float((rw.sample(seeds) - before).abs().mean())
    atomic_write_bytes(out / "report.json", json_bytes(summary))
    return summary
