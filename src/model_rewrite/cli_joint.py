"""`model-rewrite apply A.json B.json ... --joint` (and `apply BATCH.json` of a multi-edit file): the rules
solved together, applied as one entry per layer, measured alone / joint / sequential, and written out."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from .cli_flags import config_from_flags, load_edits_for, seeds_from_args, with_flags
from .run_edits import Progress
from .config import RenderConfig
from .edits import EditSpec, read_edit_json

log = logging.getLogger("model_rewrite")


def wants_joint(args: argparse.Namespace) -> bool:
    """`apply` takes the joint path with --joint or when an input is a multi-edit file."""
    from .multiedit import is_multi_edit

    return bool(args.joint) or any(is_multi_edit(read_edit_json(Path(p))) for p in args.edits)


def read_batch(rw: Any, paths: list[Path], args: argparse.Namespace) -> tuple[list[EditSpec], list[Any] | None, list[str]]:
    """The edits of edit files and multi-edit files, in order, with the command line's overrides; a multi-edit
    file's saved solve is reused when it is the only input and nothing was overridden (nor --resolve)."""
    from .joint import check_batch
    from .multiedit import is_multi_edit, load_multi_edit

    edits: list[EditSpec] = []
    sources: list[str] = []
    solved = None
    for path in paths:
        if is_multi_edit(read_edit_json(path)):
            members, groups = load_multi_edit(path)
            changed = False
            for i, m in enumerate(members):
                new, kept = with_flags(m, True, args)
                changed |= kept is None
                edits.append(new)
                sources.append(f"{path}#{i}")
            if len(paths) == 1 and groups and not changed:
                solved = groups
        else:  # an edit, a request or an edit stack (each member a rule of the batch)
            for label, spec, _ in load_edits_for(rw, path, args):
                edits.append(with_flags(spec, None, args)[0])
                sources.append(str(label))
    return check_batch([rw.check_edit(e) for e in edits]), solved, sources


def apply_joint(rw: Any, paths: list[Path], out: Path, args: argparse.Namespace) -> int:
    """Solve (or reuse), measure interference, apply, and write joint.json (+ factors), grid.png,
    model.safetensors and report.json; print the interference table."""
    from .cache import atomic_write_bytes
    from .distributed import is_main
    from .export import export_model
    from .interference import batch_overlaps, interference_table, measure_interference
    from .multiedit import save_multi_edit
    from .render import image_grid, save_png, to_uint8

    edits, solved, sources = read_batch(rw, paths, args)
    seeds = seeds_from_args(args)
    render_cfg = config_from_flags(args, RenderConfig)
    for layer in dict.fromkeys(e.layer for e in edits):
        bar = Progress(f"stats {layer}", args.quiet)
        try:
            rw.stats(layer, next(e.stats for e in edits if e.layer == layer), progress=bar)
        finally:
            bar.close()
    found = batch_overlaps(rw, edits)
    for o in found:
        if o.warns and is_main():
            log.warning(o.warning(joint=True))
    t0 = time.perf_counter()
    results = solved if solved is not None else rw.solve_many(edits)
    solve_seconds = time.perf_counter() - t0
    rows = []
    if not args.no_interference:
        bar = Progress("interference", args.quiet)
        try:
            rows = measure_interference(rw, edits, seeds, render_cfg, results, progress=bar)
        finally:
            bar.close()
    before = rw.sample(seeds)
    rw.apply_many(edits, results)
    after = rw.sample(seeds)
    groups = [{"layer": r.layer, "rank": r.delta.rank, "members": [m.spec.name for m in r.members],
               "requested_rank": getattr(r, "requested_rank", None),
               "closed_form_seconds": getattr(r, "closed_form_seconds", None),
               "refine_seconds": getattr(r, "refine_seconds", None),
               "closed_form_loss": getattr(r, "closed_form_loss", None), "goal_loss": getattr(r, "goal_loss", None),
               "rule_losses": getattr(r, "rule_losses", None)} for r in results]
    summary = {"model": rw.info.model_id, "fingerprint": rw.info.fingerprint, "heldout_seeds": seeds,
               "edits": sources, "reused_factors": solved is not None, "solve_seconds": round(solve_seconds, 3),
               "joint": groups, "overlaps": [o.to_dict() for o in found], "interference": [r.to_dict() for r in rows],
               "all_edits_mean_change": float((after - before).abs().mean())}
    if not is_main():
        return 0
    save_multi_edit(out / "joint.json", edits, results)
    save_png(image_grid([to_uint8(before), to_uint8(after)], scale=args.scale), out / "grid.png")
    weights = export_model(rw.model, rw.info, out / "model.safetensors", sources)
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=1).encode())
    for g in groups:
        print(f"layer {g['layer']}: {len(g['members'])} rules solved together, rank {g['rank']}"
              + (f" of {g['requested_rank']}" if g["requested_rank"] else "") + f" ({solve_seconds:.2f}s)")
    for line in interference_table(rows) if rows else []:
        print(line)
    print(f"wrote {out}/joint.json, {out}/grid.png, {out}/report.json and the edited weights {weights}")
    return 0
