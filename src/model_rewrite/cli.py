"""The `model-rewrite` command: layers, sample, stats, apply, search, export, serve."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing
from pathlib import Path
from typing import Any, Sequence

from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
from .errors import RewriteError

log = logging.getLogger("model_rewrite")


# --- flags generated from the config dataclasses ------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title, f"override {cls.__name__} fields (default: the edit's or the built-in value)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        want = hints[f.name]
        if want is bool:
            group.add_argument(flag, dest=f"{cls.__name__}.{f.name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {f.default})")
        else:
            group.add_argument(flag, dest=f"{cls.__name__}.{f.name}", type=want, default=None, metavar=want.__name__.upper(),
                               help=f"(default {f.default})")


def _config_from_flags(args: argparse.Namespace, cls: type, base: Any = None) -> Any:
    base = base if base is not None else cls()
    changes = {f.name: getattr(args, f"{cls.__name__}.{f.name}", None) for f in dataclasses.fields(cls)}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _seeds(args: argparse.Namespace) -> list[int]:
    from .latents import MAX_SEED, parse_seeds

    if getattr(args, "seeds", None):
        return parse_seeds(args.seeds)
    if args.samples < 1:
        raise RewriteError("--samples must be at least 1")
    if args.seed < 0 or args.seed + args.samples - 1 > MAX_SEED:
        raise RewriteError(f"--seed and --samples must name seeds from 0 to {MAX_SEED}")
    return list(range(args.seed, args.seed + args.samples))


class _Progress:
    """A tqdm bar driven by (done, total) callbacks; none with --quiet. The bar appears on the first
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


def _rewriter(args: argparse.Namespace):
    from .rewrite import Rewriter

    return Rewriter(args.model, device=args.device, cache_dir=args.cache_dir)


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
        print(f"{layer}: C is {st.dim}x{st.dim} from {st.count} keys ({st.num_samples} samples, seed {st.seed}) "
              f"in {time.perf_counter() - t0:.2f}s; cache under {path.parent}")
    return 0


def _load_edit_for(rw: Any, path: Path, args: argparse.Namespace):
    """An EditSpec (and saved factors) from our format, or from the paper's format with --layer."""
    from .paper_format import read_edit_or_request

    return read_edit_or_request(path, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer=args.layer)


def _solve_with_progress(rw: Any, spec: Any, quiet: bool):
    from tqdm import tqdm

    bar = None if quiet or spec.update.method != "optimize" else tqdm(total=spec.update.steps, desc="solve", leave=False, file=sys.stderr)

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


def _with_flags(spec: Any, delta: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The edit with the command line's config overrides; its saved factors only while nothing changed."""
    changed = {name: _config_from_flags(args, cls, getattr(spec, name))
               for name, cls in (("keys", KeyConfig), ("update", UpdateConfig), ("stats", StatsConfig))}
    if any(cfg != getattr(spec, name) for name, cfg in changed.items()) or getattr(args, "resolve", False):
        return dataclasses.replace(spec, **changed), None
    return spec, delta


def cmd_apply(args: argparse.Namespace) -> int:
    from .cache import atomic_write_bytes
    from .edits import save_edit
    from .export import export_model
    from .render import image_grid, overlay, save_png, to_uint8
    from .report import measure_edit

    rw = _rewriter(args)
    out = Path(args.out)
    paths = [Path(p) for p in args.edits]
    seeds = _seeds(args)
    render_cfg = _config_from_flags(args, RenderConfig)
    edits = []
    for path in paths:  # read and check every edit before any work
        spec, delta = _with_flags(*_load_edit_for(rw, path, args), args)
        edits.append((path, rw.check_edit(spec), delta))
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
        reports.append(info)
        stem = path.stem if len(paths) > 1 else "edit"
        save_edit(out / f"{stem}.json", spec, delta)
        rows = [to_uint8(m.before), overlay(to_uint8(m.before), m.regions), to_uint8(m.after)]  # before, where it fires, after
        save_png(image_grid(rows, scale=args.scale), out / (f"{stem}-grid.png" if len(paths) > 1 else "grid.png"))
    summary = {"model": rw.info.model_id, "fingerprint": rw.info.fingerprint, "heldout_seeds": seeds, "edits": reports}
    if reports:
        summary.update({k: reports[-1][k] for k in ("inside_change", "outside_change", "ratio")})
    weights = export_model(rw.model, rw.info, out / "model.safetensors", [r["edit"] for r in reports])
    summary["all_edits_mean_change"] = float((rw.sample(seeds) - before).abs().mean())
    atomic_write_bytes(out / "report.json", json.dumps(summary, indent=1).encode())
    for r in reports:
        print(f"{r['edit']}: layer {r['layer']}, inside change {r['inside_change']:.4f}, outside {r['outside_change']:.4f}, "
              f"ratio {r['ratio']:.2f} ({r['seconds']:.2f}s)")
    print(f"wrote {out}/grid.png, {out}/report.json and the edited weights {weights}")
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
    common(p, seeds=True)
    _add_config_flags(p, KeyConfig, "context directions")
    _add_config_flags(p, UpdateConfig, "update")
    _add_config_flags(p, StatsConfig, "statistics")
    _add_config_flags(p, RenderConfig, "report")
    p.set_defaults(func=cmd_apply)

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
