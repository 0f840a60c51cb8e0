"""The `model-rewrite` command: layers, sample, stats, apply, suggest, search, export, serve."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .cliargs import Progress as _Progress  # the command's shared argument helpers, by their old names
from .cliargs import add_config_flags as _add_config_flags
from .cliargs import config_from_flags as _config_from_flags
from .cliargs import seeds_from_args as _seeds
from .cliargs import with_flags as _with_flags
from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
from .errors import RewriteError

log = logging.getLogger("model_rewrite")


def _rewriter(args: argparse.Namespace):
    from . import distributed
    from .rewrite import Rewriter

    device = distributed.init(args.device)  # under torchrun: join the group; seeds are shared out
    if not distributed.is_main():
        args.quiet = True
    return Rewriter(args.model, device=device, cache_dir=args.cache_dir)


# --- subcommands ----------------------------------------------------------------------------------
def cmd_layers(args: argparse.Namespace) -> int:
    rw = _rewriter(args)
    rows = rw.layers()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return 0
    print(f"model {rw.info.model_id} ({rw.info.kind}, {rw.info.resolution}px, fingerprint {rw.info.fingerprint})")
    print(f"{'layer':<12}{'kind':<18}{'key size':>9}  {'key res':>7}  {'value shape':<16}")
    for r in rows:
        print(f"{r.name:<12}{r.kind:<18}{r.key_size:>9}  {r.key_resolution:>7}  {'x'.join(map(str, r.value_shape)):<16}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .render import image_grid, save_png, to_uint8

    rw = _rewriter(args)
    seeds = _seeds(args)
    imgs = to_uint8(rw.sample(seeds))
    per_row = args.per_row
    rows = [imgs[i : i + per_row] for i in range(0, len(imgs), per_row)]
    path = save_png(image_grid(rows, scale=args.scale), args.out)
    print(f"wrote {path} (seeds {seeds[0]}..{seeds[-1]}, {len(seeds)} images)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from . import distributed

    rw = _rewriter(args)
    cfg = _config_from_flags(args, StatsConfig)
    layers = [args.layer] if args.layer else [layer.name for layer in rw.layers()]
    for layer in layers:
        bar = _Progress(f"stats {layer}", args.quiet)
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


def _load_edit_for(rw: Any, path: Path, args: argparse.Namespace):
    """An EditSpec (and saved factors) from our format, or from the paper's format with --layer."""
    from .paper_format import read_edit_or_request

    return read_edit_or_request(path, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer=args.layer)


def _solve_with_progress(rw: Any, spec: Any, quiet: bool):
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


def cmd_apply(args: argparse.Namespace) -> int:
    from .cli_joint import apply_joint, wants_joint

    rw = _rewriter(args)
    if wants_joint(args):  # --joint, or a multi-edit file among the inputs
        return apply_joint(rw, [Path(p) for p in args.edits], Path(args.out), args)
    edits = []
    for path in (Path(p) for p in args.edits):  # read and check every edit before any work
        spec, delta = _with_flags(*_load_edit_for(rw, path, args), args)
        edits.append((path, rw.check_edit(spec), delta))
    _apply_and_write(rw, edits, Path(args.out), args)
    return 0


def _apply_and_write(rw: Any, edits: list[tuple[Path, Any, Any]], out: Path, args: argparse.Namespace) -> None:
    """Solve (unless solved) and apply checked edits; write their files, grids, report.json and weights."""
    from .cache import atomic_write_bytes
    from .edits import save_edit
    from .export import export_model
    from .quality import quality_report
    from .render import image_grid, overlay, save_png, to_uint8
    from .report import measure_edit

    seeds = _seeds(args)
    render_cfg = _config_from_flags(args, RenderConfig)
    before = rw.sample(seeds)
    reports = []
    for path, spec, delta in edits:
        overlap = sorted(set(spec.selection_seeds) & set(seeds))
        if overlap:
            log.warning("held-out seeds %s are also used by the edit's selections", overlap)
        bar = _Progress(f"stats {spec.layer}", args.quiet)
        try:
            rw.stats(spec.layer, spec.stats, progress=bar)
        finally:
            bar.close()
        t0 = time.perf_counter()
        info: dict[str, Any] = {"edit": str(path)}
        if delta is None:
            result = _solve_with_progress(rw, spec, args.quiet)
            delta = result.delta
            info.update(solve_seconds=round(result.seconds, 3), closed_form_loss=result.closed_form_loss,
                        goal_loss=result.goal_loss, steps=len(result.losses))
        else:
            info.update(solve_seconds=0.0, reused_factors=True)
        entry = rw.apply(spec, delta)
        m = measure_edit(rw, entry.id, seeds, render_cfg)
        info.update(m.report.to_dict(), seconds=round(time.perf_counter() - t0, 3))
        info.pop("heldout_seeds")
        quality = quality_report(rw, entry.id, seeds, render_cfg)
        info["quality"] = {k: v for k, v in quality.to_dict().items() if k not in ("heldout_seeds", *m.report.change.to_dict())}
        reports.append(info)
        stem = path.stem if len(edits) > 1 else "edit"
        save_edit(out / f"{stem}.json", spec, delta)
        rows = [to_uint8(m.before), overlay(to_uint8(m.before), m.regions), to_uint8(m.after)]  # before, where it fires, after
        save_png(image_grid(rows, scale=args.scale), out / (f"{stem}-grid.png" if len(edits) > 1 else "grid.png"))
    summary = {"model": rw.info.model_id, "fingerprint": rw.info.fingerprint, "heldout_seeds": seeds, "edits": reports}
    if reports:
        summary.update({k: reports[-1][k] for k in ("inside_change", "outside_change", "ratio")})
    weights = export_model(rw.model, rw.info, out / "model.safetensors", [r["edit"] for r in reports])
    summary["all_edits_mean_change"] = float((rw.sample(seeds) - before).abs().mean())
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=1).encode())
    for r in reports:
        print(f"{r['edit']}: layer {r['layer']}, inside change {r['inside_change']:.4f}, outside {r['outside_change']:.4f}, "
              f"ratio {r['ratio']:.2f} ({r['seconds']:.2f}s)")
        for line in r["quality"]["lines"]:
            print(f"  {line}")
    print(f"wrote {out}/grid.png, {out}/report.json and the edited weights {weights}")


def cmd_suggest(args: argparse.Namespace) -> int:
    from .cache import atomic_write_bytes

    rw = _rewriter(args)
    spec, _ = _with_flags(*_load_edit_for(rw, Path(args.edit), args), args)
    rw.check_edit(spec)
    try:
        ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    except ValueError:
        raise RewriteError(f"--ranks must be a comma-separated list of integers, got {args.ranks!r}") from None
    if not ranks or min(ranks) < 1:
        raise RewriteError("--ranks must name ranks of at least 1, e.g. 1,2,4")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    bars: dict[str, _Progress] = {}

    def progress(what: str, done: int, total: int) -> None:
        bars.setdefault(what, _Progress(what, args.quiet))(done, total)

    t0 = time.perf_counter()
    try:
        cands = rw.suggest(spec, layers=layers, ranks=ranks, refine=args.refine, seeds=_seeds(args),
                           config=_config_from_flags(args, RenderConfig), progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    seconds = time.perf_counter() - t0
    fmt = lambda v, f=".2f": "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'layer':<10}{'rank':>5}{'score':>8}{'transfer':>10}{'fidelity':>10}{'locality':>10}{'collateral':>12}"
          f"{'seconds':>9}")
    for c in cands:
        d = c.to_dict()
        print(f"{c.layer:<10}{c.rank:>5}{fmt(d['score']):>8}{fmt(d['transfer']):>10}{fmt(d['paste_fidelity']):>10}"
              f"{fmt(d['locality'], '.1f'):>10}{fmt(d['collateral'], '.3f'):>12}{d['seconds']:>9.2f}"
              + (f"  ({c.error})" if c.error else ""))
    out = Path(args.out)
    best = cands[0]
    result = {"edit": str(args.edit), "seconds": round(seconds, 3), "best": {"layer": best.layer, "rank": best.rank},
              "candidates": [c.to_dict() for c in cands]}
    atomic_write_bytes(out / "suggest.json", json.dumps(result, indent=1).encode())
    print(f"best: layer {best.layer}, rank {best.rank} ({seconds:.1f}s in all); wrote {out}/suggest.json")
    if args.apply_best:
        if best.quality is None:
            raise RewriteError(f"no layer and rank could be solved for {args.edit}: {best.error}")
        chosen = dataclasses.replace(spec, layer=best.layer, keys=dataclasses.replace(spec.keys, rank=best.rank))
        _apply_and_write(rw, [(Path(args.edit), chosen, None)], out, args)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .render import image_grid, overlay, save_png, to_uint8
    from .report import fire_regions
    from .search import rank_by_heat
    from .cache import atomic_write_bytes

    rw = _rewriter(args)
    spec, _ = _with_flags(*_load_edit_for(rw, Path(args.edit), args), args)
    if args.top < 1:
        raise RewriteError("--top must be at least 1")
    render_cfg = _config_from_flags(args, RenderConfig)
    dirs = rw.edit_directions(rw.check_edit(spec))
    if render_cfg.heat_direction >= dirs.shape[0]:
        raise RewriteError(f"--heat-direction {render_cfg.heat_direction} is out of range: the edit has "
                           f"{dirs.shape[0]} direction(s), numbered from 0")
    seeds = _seeds(args)
    heats = rw.heat(spec.layer, dirs, seeds, render_cfg.heat_direction)
    order, scores = rank_by_heat(heats)
    top = order[: args.top]
    regions, th = fire_regions(heats, rw.info.resolution, render_cfg.fire_quantile)
    imgs = to_uint8(rw.sample([seeds[i] for i in top.tolist()]))
    out = Path(args.out)
    save_png(image_grid([overlay(imgs, regions[top])], scale=args.scale), out / "matches.png")
    ranking = [{"seed": seeds[i], "score": float(s)} for i, s in zip(order.tolist(), scores.tolist())]
    atomic_write_bytes(out / "matches.json", json.dumps({"layer": spec.layer, "threshold": th, "ranking": ranking}, indent=1).encode())
    for r in ranking[: args.top]:
        print(f"seed {r['seed']:>6}  score {r['score']:.4f}")
    print(f"wrote {out}/matches.png and {out}/matches.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import check_export, choose_format, export_edited

    rw = _rewriter(args)
    choose_format(rw.info, args.out, args.format)  # refuse an impossible format before any work
    for p in args.edits:
        spec, delta = _load_edit_for(rw, Path(p), args)
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
    serve(model=args.model, layer=args.layer, host=args.host, port=args.port, cache_dir=args.cache_dir, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-rewrite", description="Rewrite the rules of a pretrained generator.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('model_rewrite').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, layer: bool = True, seeds: bool = False, samples: int = 16) -> None:
        p.add_argument("--model", default="faces", help="'faces' (default), 'tiny', or a checkpoint path")
        if layer:
            p.add_argument("--layer", default=None, help="layer name, as listed by `model-rewrite layers`")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--cache-dir", default=None, help="statistics cache (default $MODEL_REWRITE_CACHE or ~/.cache/model-rewrite)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if seeds:
            p.add_argument("--seed", type=int, default=1000, help="first seed of the images to render (default 1000)")
            p.add_argument("--samples", type=int, default=samples, help=f"number of images (default {samples})")
            p.add_argument("--seeds", default=None, help="seeds as ranges and lists, e.g. '0-15' or '3,7,20-29' "
                                                         "(instead of --seed/--samples)")
            p.add_argument("--scale", type=int, default=2, help="pixel scale of written grids (default 2)")

    p = sub.add_parser("layers", help="list the editable layers")
    common(p, layer=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("sample", help="write a grid of generated images")
    common(p, layer=False, seeds=True)
    p.set_defaults(seed=0)
    p.add_argument("--per-row", type=int, default=8)
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("stats", help="collect (and cache) key statistics of a layer (all layers without --layer)")
    common(p)
    _add_config_flags(p, StatsConfig, "statistics")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("apply", help="apply edit files; write the edited weights, a before/after grid and report.json")
    p.add_argument("edits", nargs="+", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resolve", action="store_true", help="solve again even if solved factors lie beside the edit")
    p.add_argument("--joint", action="store_true", help="solve the rules at each layer together; measure each rule "
                   "alone, joint and sequential; write joint.json (a multi-edit file, read back by apply)")
    p.add_argument("--no-interference", action="store_true", help="with --joint: skip the alone/sequential measurements")
    common(p, seeds=True)
    _add_config_flags(p, KeyConfig, "context directions")
    _add_config_flags(p, UpdateConfig, "update")
    _add_config_flags(p, StatsConfig, "statistics")
    _add_config_flags(p, RenderConfig, "report")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("suggest", help="try the edit at every layer and a few ranks; rank them by its quality report")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder (suggest.json; with --apply-best also apply's files)")
    p.add_argument("--ranks", default="1,2,4", help="ranks to try, comma-separated (default 1,2,4)")
    p.add_argument("--layers", default=None, help="layers to try, comma-separated (default: every layer whose "
                                                  "key grid is at least 4 cells on a side)")
    p.add_argument("--refine", action="store_true", help="solve each candidate fully (default: the closed form)")
    p.add_argument("--apply-best", action="store_true", help="apply the best candidate and write what apply writes")
    common(p, seeds=True)
    _add_config_flags(p, KeyConfig, "context directions")
    _add_config_flags(p, UpdateConfig, "update")
    _add_config_flags(p, StatsConfig, "statistics")
    _add_config_flags(p, RenderConfig, "report")
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser("search", help="rank samples by an edit's context direction and show where it fires")
    p.add_argument("edit", metavar="EDIT.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top", type=int, default=16, help="matches to show (default 16)")
    common(p, seeds=True, samples=256)
    _add_config_flags(p, KeyConfig, "context directions")
    _add_config_flags(p, StatsConfig, "statistics")
    _add_config_flags(p, RenderConfig, "report")
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
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="start the web app")
    common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.set_defaults(func=cmd_serve)
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
