"""The commands for the original authors' files: `convert` (one of their request files to our edit file)
and `replay-paper` (their section 5.1 experiments on a user's StyleGAN2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_flags import (add_common, add_edit_config_flags, config_from_flags, load_edit_for, rewriter_from_args,
                        seeds_from_args)
from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
from .errors import RewriteError


def cmd_convert(args: argparse.Namespace) -> int:
    from .edits import save_edit

    rw = rewriter_from_args(args)
    out = Path(args.out)
    if out.suffix != ".json":
        raise RewriteError(f"--out {out} must name a .json edit file")
    spec, _ = load_edit_for(rw, Path(args.request), args)
    spec = rw.check_edit(spec)
    save_edit(out, spec)
    roles = ", ".join(role for role, _ in spec.selections)
    kind = "a search request (no paste: `model-rewrite search`)" if spec.is_search_request else "an edit"
    print(f"wrote {out}: {kind} at layer {spec.layer} with {roles}; latents {spec.latents}")
    return 0


def cmd_replay_paper(args: argparse.Namespace) -> int:
    from .replay import PAPER_SCHEDULE, replay_paper

    rw = rewriter_from_args(args)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()] if args.experiments else None
    summary = replay_paper(rw, args.requests, args.out, seeds_from_args(args), experiments=names,
                           update=config_from_flags(args, UpdateConfig, PAPER_SCHEDULE),
                           keys=config_from_flags(args, KeyConfig), stats=config_from_flags(args, StatsConfig),
                           render=config_from_flags(args, RenderConfig), quiet=args.quiet, scale=args.scale)
    for row in summary["experiments"]:
        print(f"{row['experiment']}: {row['paper_layer']} ({row['layer']}), inside change {row['inside_change']:.4f}, "
              f"outside {row['outside_change']:.4f}, ratio {row['ratio']:.2f}")
    print(f"wrote {args.out}/summary.json and one folder per experiment")
    return 0


def add_paper_commands(sub: argparse._SubParsersAction) -> None:
    """Register `convert` and `replay-paper`."""
    p = sub.add_parser("convert", help="convert one of the authors' request files into our edit file (every selection kept)")
    p.add_argument("request", metavar="REQUEST.json")
    p.add_argument("--out", required=True, help="the edit file to write (.json)")
    add_common(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("replay-paper", help="apply the paper's section 5.1 edits (dome2spire, dome2tree, dome2castle, smile) "
                                            "at the paper's layers with the authors' latents; one report each")
    p.add_argument("--requests", required=True, help="folder holding the authors' request files (dome2spire.json, "
                                                     "dome2tree.json, dome2castle_layer6_with_context.json, smile.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--experiments", default=None, help="comma-separated subset of dome2spire,dome2tree,dome2castle,smile")
    add_common(p, layer=False, seeds=True)
    p.set_defaults(func=cmd_replay_paper, latents="paper")
    add_edit_config_flags(p, "update (default: our optimiser on the authors' schedule, 2000 steps, preserve 0; "
                             "--method reference runs their algorithm)")
