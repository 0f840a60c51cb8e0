"""The commands that judge an edit before and after it is made: `suggest` (every layer and a few ranks,
ranked by the quality report) and `preview` (the goal as the model will draw it, beside the painting)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from .cli_flags import (add_common, add_config_flags, add_edit_config_flags, adopt_latents, config_from_flags,
                        input_files, load_edit_for, rewriter_from_args, seeds_from_args, with_flags)
from .config import MAX_RANK, RenderConfig, StatsConfig, UpdateConfig
from .errors import RewriteError


def cmd_suggest(args: argparse.Namespace) -> int:
    from .cache import atomic_write_bytes, json_bytes
    from .outdir import check_output_folder, staged_folder
    from .run_edits import Progress, apply_edits

    rw = rewriter_from_args(args)
    out = Path(args.out)
    seeds, render = seeds_from_args(args), config_from_flags(args, RenderConfig)  # checked before any work
    check_output_folder(out, input_files(rw, [Path(args.edit)]))
    spec, _ = with_flags(*load_edit_for(rw, Path(args.edit), args), args)
    adopt_latents(rw, [spec], args)
    rw.check_edit(spec)
    try:
        ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    except ValueError:
        raise RewriteError(f"--ranks must be a comma-separated list of integers, got {args.ranks!r}") from None
    if not ranks or min(ranks) < 1 or max(ranks) > MAX_RANK:
        raise RewriteError(f"--ranks must name ranks from 1 to {MAX_RANK}, e.g. 1,2,4")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    if args.goal_only:  # rank layers by what they can draw, before solving anything
        from .suggest import rank_layers_by_goal

        ranked = rank_layers_by_goal(rw, spec, layers)
        print(f"{'layer':<10}{'goal fidelity':>14}")
        for layer, value in ranked:
            print(f"{layer:<10}{value:>14.2f}")
        with staged_folder(out) as tmp:
            atomic_write_bytes(tmp / "suggest.json", json_bytes({"edit": str(args.edit), "by": "goal_fidelity",
                                                                 "layers": [{"layer": l, "goal_fidelity": v} for l, v in ranked]}))
        print(f"best layer by goal fidelity: {ranked[0][0]}; wrote {out}/suggest.json")
        return 0
    bars: dict[str, Progress] = {}

    def progress(what: str, done: int, total: int) -> None:
        bars.setdefault(what, Progress(what, args.quiet))(done, total)

    t0 = time.perf_counter()
    try:
        cands = rw.suggest(spec, layers=layers, ranks=ranks, refine=args.refine, seeds=seeds, config=render,
                           progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    seconds = time.perf_counter() - t0
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'layer':<10}{'rank':>5}{'score':>8}{'transfer':>10}{'fidelity':>10}{'locality':>10}{'inside':>8}{'outside':>9}"
          f"{'collateral':>12}{'seconds':>9}")
    for c in cands:
        d = c.to_dict()
        print(f"{c.layer:<10}{c.rank:>5}{fmt(d['score']):>8}{fmt(d['transfer']):>10}{fmt(d['paste_fidelity']):>10}"
              f"{fmt(d['locality'], '.1f'):>10}{fmt(d['inside_change'], '.3f'):>8}{fmt(d['outside_change'], '.3f'):>9}"
              f"{fmt(d['collateral'], '.3f'):>12}{d['seconds']:>9.2f}"
              + (f"  ({c.error})" if c.error else ""))
    print("score: the change inside where the rule fires - outside it - collateral (mean |pixel change|; "
          "model_rewrite.suggest)")
    best = cands[0]
    if args.apply_best and best.quality is None:
        raise RewriteError(f"no layer and rank could be solved for {args.edit}: {best.error}")
    result = {"edit": str(args.edit), "seconds": round(seconds, 3), "best": {"layer": best.layer, "rank": best.rank},
              "candidates": [c.to_dict() for c in cands]}
    with staged_folder(out) as tmp:  # `out` is replaced as a whole, as the last step
        atomic_write_bytes(tmp / "suggest.json", json_bytes(result))
        print(f"best: layer {best.layer}, rank {best.rank} ({seconds:.1f}s in all); writing {out}/suggest.json")
        if args.apply_best:
            chosen = dataclasses.replace(spec, layer=best.layer, keys=dataclasses.replace(spec.keys, rank=best.rank))
            summary = apply_edits(rw, [(Path(args.edit), chosen, None)], seeds, tmp, render=render, quiet=args.quiet,
                                  scale=args.scale)
            for line in summary["edits"][0]["quality"]["lines"]:
                print(f"  {line}")
            print(f"applied it: writing {out}/grid.png, {out}/report.json and the edited weights "
                  f"{out / Path(summary['weights']).name}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    import torch

    from .masks import copy_placement, paste_patch
    from .render import image_grid, save_png, to_uint8

    rw = rewriter_from_args(args)
    spec, _ = with_flags(*load_edit_for(rw, Path(args.edit), args), args)
    adopt_latents(rw, [spec], args)
    rw.check_edit(spec)
    rendered = rw.render_goal(spec)
    out = Path(args.out)
    original = rw.sample([spec.paste.seed])[0]
    row = [original]
    if spec.copy is not None and not spec.update.erase:
        copy_img = rw.sample([spec.copy.seed])[0]
        copy_box, box = copy_placement(spec.copy.mask, spec.paste.mask)
        painted = paste_patch(original, copy_img, spec.copy.mask, copy_box, box)
        save_png(to_uint8(painted[None])[0], out / "painted.png")
        row.append(painted)
    save_png(to_uint8(rendered[None])[0], out / "rendered-goal.png")
    row.append(rendered)
    save_png(image_grid([to_uint8(torch.stack(row))], scale=args.scale), out / "preview.png")
    what = "painted.png (the pixel composite), " if len(row) == 3 else ""
    print(f"wrote {out}/{what}rendered-goal.png (the goal as layer {spec.layer} can draw it) and preview.png "
          f"(paste image, {'painted, ' if len(row) == 3 else ''}rendered goal)")
    return 0


def add_quality_commands(sub: Any) -> None:
    """Add `suggest` and `preview` to the command's subparsers."""
    p = sub.add_parser("suggest", help="try the edit at every layer and a few ranks; rank them by its quality report")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder (suggest.json; with --apply-best also apply's files)")
    p.add_argument("--ranks", default="1,2,4", help="ranks to try, comma-separated (default 1,2,4)")
    p.add_argument("--layers", default=None, help="layers to try, comma-separated (default: every layer whose "
                                                  "key grid is at least 4 cells on a side)")
    p.add_argument("--refine", action="store_true", help="solve each candidate fully (default: the closed form)")
    p.add_argument("--apply-best", action="store_true", help="apply the best candidate and write what apply writes")
    p.add_argument("--goal-only", action="store_true", help="only rank layers by goal fidelity (what each can draw of "
                                                            "the painting), solving nothing")
    add_common(p, seeds=True)
    add_edit_config_flags(p)
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser("preview", help="the edit's goal as the model will draw it, beside the painted composite")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder (painted.png, rendered-goal.png, preview.png)")
    p.add_argument("--scale", type=int, default=4, help="pixel scale of preview.png (default 4)")
    add_common(p)
    add_config_flags(p, UpdateConfig, "update")
    add_config_flags(p, StatsConfig, "statistics")
    p.set_defaults(func=cmd_preview)
