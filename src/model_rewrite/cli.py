"""The `model-rewrite` command: layers, sample, stats, apply, search, export, serve; (cli_quality.py) suggest and
preview; and (cli_paper.py) the commands for the original authors' files, convert and replay-paper."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from .cli_flags import (OneLineParser, add_common, add_config_flags, add_edit_config_flags, adopt_latents,
                        check_heat_direction, config_from_flags, input_files, int_in, load_edit_for, load_edits_for,
                        rewriter_from_args, seeds_from_args, with_flags)
from .cli_paper import add_paper_commands
from .cli_quality import add_quality_commands
from .config import KeyConfig, RenderConfig, StatsConfig
from .errors import RewriteError

log = logging.getLogger("model_rewrite")


# --- subcommands ----------------------------------------------------------------------------------
def cmd_layers(args: argparse.Namespace) -> int:
    rw = rewriter_from_args(args)
    rows = rw.layers()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return 0
    print(f"model {rw.info.model_id} ({rw.info.kind}, {rw.info.resolution}px, fingerprint {rw.info.fingerprint})")
    alias = any(r.alias for r in rows)  # the authors' names (StyleGAN2), accepted wherever a layer is named
    print(f"{'layer':<12}" + (f"{'alias':<9}" if alias else "") + f"{'kind':<18}{'key size':>9}  {'key res':>7}  {'value shape':<16}")
    for r in rows:
        print(f"{r.name:<12}" + (f"{r.alias:<9}" if alias else "") +
              f"{r.kind:<18}{r.key_size:>9}  {r.key_resolution:>7}  {'x'.join(map(str, r.value_shape)):<16}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .render import image_grid, save_png, to_uint8

    rw = rewriter_from_args(args)
    seeds = seeds_from_args(args)
    imgs = to_uint8(rw.sample(seeds))
    per_row = args.per_row
    rows = [imgs[i : i + per_row] for i in range(0, len(imgs), per_row)]
    path = save_png(image_grid(rows, scale=args.scale), args.out)
    print(f"wrote {path} (seeds {seeds[0]}..{seeds[-1]}, {len(seeds)} images, latents {rw.latent_scheme})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from . import distributed
    from .run_edits import Progress

    rw = rewriter_from_args(args)
    cfg = config_from_flags(args, StatsConfig)
    layers = [rw.spec(args.layer).name] if args.layer else [layer.name for layer in rw.layers()]
    for layer in layers:
        bar = Progress(f"stats {layer}", args.quiet)
        t0 = time.perf_counter()
        try:
            st = rw.stats(layer, cfg, progress=bar)
        finally:
            bar.close()
        path = rw.store.path_for("stats", "", {})  # directory hint only
        procs = distributed.world()[1]
        if distributed.is_main():
            print(f"{layer}: C is {st.dim}x{st.dim} from {st.count} keys ({st.num_samples} samples, seed {st.seed}) "
                  f"in {time.perf_counter() - t0:.2f}s" + (f" on {procs} processes" if procs > 1 else "")
                  + f"; cache under {path.parent}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .cli_joint import apply_joint, wants_joint
    from .outdir import check_output_folder, staged_folder
    from .run_edits import apply_edits

    if wants_joint(args):  # --joint, or a multi-edit file among the inputs
        return apply_joint(rewriter_from_args(args), [Path(p) for p in args.edits], Path(args.out), args)

    rw = rewriter_from_args(args)
    out, paths = Path(args.out), [Path(p) for p in args.edits]
    seeds, render = seeds_from_args(args), config_from_flags(args, RenderConfig)  # every argument checked before any work
    check_output_folder(out, input_files(rw, paths))
    edits = [(label, *with_flags(spec, delta, args)) for path in paths for label, spec, delta in load_edits_for(rw, path, args)]
    adopt_latents(rw, [spec for _, spec, _ in edits], args)
    for path, spec, _ in edits:  # read and check every edit before any work
        if spec.is_search_request:
            raise RewriteError(f"{path} has no paste selection: it is a search request (key/query only), which cannot be "
                               f"applied; rank images by it with `model-rewrite search {path} --layer {spec.layer}`")
    edits = [(path, rw.check_edit(spec), delta) for path, spec, delta in edits]
    check_heat_direction(args, [spec for _, spec, _ in edits])
    with staged_folder(out) as tmp:  # `out` is replaced as a whole, as the last step
        summary = apply_edits(rw, edits, seeds, tmp, render=render, quiet=args.quiet, scale=args.scale)
    for r in summary["edits"]:
        print(f"{r['edit']}: layer {r['layer']}, inside change {r['inside_change']:.4f}, outside {r['outside_change']:.4f}, "
              f"ratio {r['ratio']:.2f} ({r['seconds']:.2f}s)")
        for line in r["quality"]["lines"]:
            print(f"  {line}")
    print(f"wrote {out}/grid.png, {out}/report.json and the edited weights {out / Path(summary['weights']).name}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .render import image_grid, overlay, save_png, to_uint8
    from .report import fire_regions
    from .search import rank_by_heat
    from .cache import atomic_write_bytes, json_bytes
    from .quality import edge_share, edge_warning

    from .outdir import check_output_folder, staged_folder

    rw = rewriter_from_args(args)
    out = Path(args.out)
    check_output_folder(out, input_files(rw, [Path(args.edit)]))
    spec, _ = with_flags(*load_edit_for(rw, Path(args.edit), args), args)
    adopt_latents(rw, [spec], args)
    render_cfg = config_from_flags(args, RenderConfig)
    dirs = rw.search_directions(rw.check_edit(spec))  # the query region's direction if it has one, else the context's
    if render_cfg.heat_direction >= dirs.shape[0]:
        raise RewriteError(f"--heat-direction {render_cfg.heat_direction} is out of range: the edit has "
                           f"{dirs.shape[0]} direction(s), numbered from 0")
    seeds = seeds_from_args(args)
    heats = rw.heat(spec.layer, dirs, seeds, render_cfg.heat_direction)
    order, scores = rank_by_heat(heats)
    top = order[: args.top]
    regions, th = fire_regions(heats, rw.info.resolution, render_cfg.fire_quantile)
    side, share = edge_share(heats > th)
    imgs = to_uint8(rw.sample([seeds[i] for i in top.tolist()]))
    ranking = [{"seed": seeds[i], "score": float(s)} for i, s in zip(order.tolist(), scores.tolist())]
    ranked_by = "query" if spec.query is not None else "context"
    with staged_folder(out) as tmp:  # `out` is replaced as a whole, as the last step
        save_png(image_grid([overlay(imgs, regions[top])], scale=args.scale), tmp / "matches.png")
        atomic_write_bytes(tmp / "matches.json", json_bytes({"layer": spec.layer, "ranked_by": ranked_by,
                                                              "latents": rw.latent_scheme, "threshold": th,
                                                              "edge_side": side, "edge_share": share, "ranking": ranking}))
    for r in ranking[: args.top]:
        print(f"seed {r['seed']:>6}  score {r['score']:.4f}")
    warning = edge_warning(side, share, f"the {ranked_by}'s direction fires on these {len(seeds)} images")
    if warning:
        print(warning)
    print(f"wrote {out}/matches.png and {out}/matches.json (ranked by the {ranked_by}'s direction)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import choose_format, export_edited

    rw = rewriter_from_args(args)
    choose_format(rw.info, args.out, args.format)  # refuse an impossible format before any work
    out = Path(args.out).resolve()
    for item in input_files(rw, [Path(p) for p in args.edits]):
        if item.resolve() == out or Path(f"{item}.edits.json").resolve() == out:
            raise RewriteError(f"--out {args.out} is the input {item}; write the edited model to another file")
    edits = [(spec, delta) for p in args.edits for _, spec, delta in load_edits_for(rw, Path(p), args)]
    adopt_latents(rw, [spec for spec, _ in edits], args)
    for spec, _ in edits:  # every edit is checked before any is applied
        rw.check_edit(spec)
    for spec, delta in edits:
        rw.apply(spec, delta)
    # checked (reloaded, the same images exactly) before it is published; ExportError otherwise
    result = export_edited(rw.model, rw.info, args.out, [str(p) for p in args.edits], args.format, args.also_g,
                           check_latents=rw.latents(list(range(4))))
    what = "safetensors" if result.format == "safetensors" else f"{result.format} format, {len(result.changed)} tensor(s) changed"
    extra = f", edits in {result.sidecar}" if result.sidecar else ""
    print(f"wrote {result.path} ({what}{extra}) with {len(args.edits)} edit(s); reloaded max difference "
          f"{result.max_difference:.2e}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.app import serve
    except ImportError as exc:
        raise RewriteError(f"the web app needs FastAPI and uvicorn: pip install 'model-rewrite[web]' ({exc})") from None
    serve(model=args.model, layer=args.layer, host=args.host, port=args.port, cache_dir=args.cache_dir, device=args.device,
          latents=args.latents or "seeds")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="model-rewrite", description="Rewrite the rules of a pretrained generator.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('model_rewrite').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("layers", help="list the editable layers")
    add_common(p, layer=False, latents=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("sample", help="write a grid of generated images")
    add_common(p, layer=False, seeds=True)
    p.set_defaults(seed=0)
    p.add_argument("--per-row", type=int_in(1, 256), default=8, help="images per row (default 8, 1..256)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("stats", help="collect (and cache) key statistics of a layer (all layers without --layer)")
    add_common(p, latents=False)
    add_config_flags(p, StatsConfig, "statistics")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("apply", help="apply edit files; write the edited weights, a before/after grid and report.json")
    p.add_argument("edits", nargs="+", metavar="EDIT.json", help="edit files, or edit-stack files (the web app's saved "
                   "stacks): their edits are applied in order")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resolve", action="store_true", help="solve again even if solved factors lie beside the edit")
    p.add_argument("--joint", action="store_true", help="solve the rules at each layer together; measure each rule "
                   "alone, joint and sequential; write joint.json (a multi-edit file, read back by apply)")
    p.add_argument("--no-interference", action="store_true", help="with --joint: skip the alone/sequential measurements")
    add_common(p, seeds=True)
    add_edit_config_flags(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("search", help="rank samples by an edit's query direction (else its context's) and show where it fires")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top", type=int_in(1, 1024), default=16, help="matches to show (default 16, 1..1024)")
    add_common(p, seeds=True, samples=256)
    add_config_flags(p, KeyConfig, "context directions")
    add_config_flags(p, StatsConfig, "statistics")
    add_config_flags(p, RenderConfig, "report")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="apply edits and write the edited model, in its own checkpoint format or as safetensors")
    p.add_argument("edits", nargs="+", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output file (never the model's own file)")
    p.add_argument("--format", choices=["same", "safetensors"], default=None,
                   help="same: the input checkpoint's own format (rosinality .pt, NVIDIA .pkl, ProGAN, DCGAN), edits "
                        "listed in OUT.edits.json; safetensors: our own file. Default: same for a model read from a "
                        "file unless --out ends in .safetensors")
    p.add_argument("--also-g", action="store_true",
                   help="also move the training generator (rosinality g, NVIDIA G) by the same weight change")
    add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="start the web app")
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(0, 65535), default=0, help="port (default 0: a free one)")
    p.set_defaults(func=cmd_serve)

    add_quality_commands(sub)
    add_paper_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RewriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
