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

from .cli_flags import (add_common, add_config_flags, adopt_latents, config_from_flags, load_edit_for, load_edits_for,
                        rewriter_from_args, seeds_from_args, with_flags)
from .cli_paper import add_paper_commands
from .cli_quality import add_quality_commands
from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
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
        print(f"{layer}: C is {st.dim}x{st.dim} from {st.count} keys ({st.num_samples} samples, seed {st.seed}) "
              f"in {time.perf_counter() - t0:.2f}s; cache under {path.parent}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .run_edits import apply_edits

    rw = rewriter_from_args(args)
    paths = [Path(p) for p in args.edits]
    edits = [(label, *with_flags(spec, delta, args)) for path in paths for label, spec, delta in load_edits_for(rw, path, args)]
    adopt_latents(rw, [spec for _, spec, _ in edits], args)
    for path, spec, _ in edits:  # read and check every edit before any work
        if spec.is_search_request:
            raise RewriteError(f"{path} has no paste selection: it is a search request (key/query only), which cannot be "
                               f"applied; rank images by it with `model-rewrite search {path} --layer {spec.layer}`")
    edits = [(path, rw.check_edit(spec), delta) for path, spec, delta in edits]
    out = Path(args.out)
    summary = apply_edits(rw, edits, seeds_from_args(args), out, render=config_from_flags(args, RenderConfig),
                          quiet=args.quiet, scale=args.scale)
    for r in summary["edits"]:
        print(f"{r['edit']}: layer {r['layer']}, inside change {r['inside_change']:.4f}, outside {r['outside_change']:.4f}, "
              f"ratio {r['ratio']:.2f} ({r['seconds']:.2f}s)")
        for line in r["quality"]["lines"]:
            print(f"  {line}")
    print(f"wrote {out}/grid.png, {out}/report.json and the edited weights {summary['weights']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .render import image_grid, overlay, save_png, to_uint8
    from .report import fire_regions
    from .search import rank_by_heat
    from .cache import atomic_write_bytes

    rw = rewriter_from_args(args)
    spec, _ = with_flags(*load_edit_for(rw, Path(args.edit), args), args)
    adopt_latents(rw, [spec], args)
    if args.top < 1:
        raise RewriteError("--top must be at least 1")
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
    imgs = to_uint8(rw.sample([seeds[i] for i in top.tolist()]))
    out = Path(args.out)
    save_png(image_grid([overlay(imgs, regions[top])], scale=args.scale), out / "matches.png")
    ranking = [{"seed": seeds[i], "score": float(s)} for i, s in zip(order.tolist(), scores.tolist())]
    ranked_by = "query" if spec.query is not None else "context"
    atomic_write_bytes(out / "matches.json", json.dumps({"layer": spec.layer, "ranked_by": ranked_by, "latents": rw.latent_scheme,
                                                         "threshold": th, "ranking": ranking}, indent=1).encode())
    for r in ranking[: args.top]:
        print(f"seed {r['seed']:>6}  score {r['score']:.4f}")
    print(f"wrote {out}/matches.png and {out}/matches.json (ranked by the {ranked_by}'s direction)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_export, choose_format, export_edited

    rw = rewriter_from_args(args)
    choose_format(rw.info, args.out, args.format)  # refuse an impossible format before any work
    edits = [(spec, delta) for p in args.edits for _, spec, delta in load_edits_for(rw, Path(p), args)]
    adopt_latents(rw, [spec for spec, _ in edits], args)
    for spec, delta in edits:
        rw.apply(spec, delta)
    result = export_edited(rw.model, rw.info, args.out, [str(p) for p in args.edits], args.format, args.also_g)
    diff = check_export(rw.model, result, rw.latents(list(range(4))), rw.info)
    what = "safetensors" if result.format == "safetensors" else f"{result.format} format, {len(result.changed)} tensor(s) changed"
    extra = f", edits in {result.sidecar}" if result.sidecar else ""
    print(f"wrote {result.path} ({what}{extra}) with {len(args.edits)} edit(s); reloaded max difference {diff:.2e}")
    return 0 if diff == 0.0 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.app import serve
    except ImportError as exc:
        raise RewriteError(f"the web app needs FastAPI and uvicorn: pip install 'model-rewrite[web]' ({exc})") from None
    serve(model=args.model, layer=args.layer, host=args.host, port=args.port, cache_dir=args.cache_dir, device=args.device,
          latents=args.latents or "seeds")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-rewrite", description="Rewrite the rules of a pretrained generator.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('model_rewrite').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("layers", help="list the editable layers")
    add_common(p, layer=False, latents=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("sample", help="write a grid of generated images")
    add_common(p, layer=False, seeds=True)
    p.set_defaults(seed=0)
    p.add_argument("--per-row", type=int, default=8)
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
    add_common(p, seeds=True)
    add_config_flags(p, KeyConfig, "context directions")
    add_config_flags(p, UpdateConfig, "update")
    add_config_flags(p, StatsConfig, "statistics")
    add_config_flags(p, RenderConfig, "report")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("search", help="rank samples by an edit's query direction (else its context's) and show where it fires")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top", type=int, default=16, help="matches to show (default 16)")
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
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
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
