"""The command line's shared flags: the common ones (--model, --layer, --latents, seeds...), one flag per
config dataclass field, and reading them back into a Rewriter, seeds, configs and edits."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, NoReturn, Sequence

from .config import MAX_SEED, KeyConfig, RenderConfig, StatsConfig, UpdateConfig, field_choices, field_range
from .errors import InvalidEdit, RewriteError
from .latents import LATENT_SCHEMES, MAX_SEED_LIST


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), naming the problem and --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def int_in(lo: int, hi: int, what: str = "") -> Any:
    """An argparse type: an integer from `lo` to `hi`, else a one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {lo} to {hi}{what}")
        return value

    parse.__name__ = "int"
    return parse


def add_common(p: argparse.ArgumentParser, layer: bool = True, seeds: bool = False, samples: int = 16,
               latents: bool = True) -> None:
    """The flags most commands share: model, layer, latents, device, cache, quiet and (to render) seeds."""
    p.add_argument("--model", default="faces", help="'faces' (default), 'tiny', or a checkpoint path")
    if layer:
        p.add_argument("--layer", default=None, help="layer name, as listed by `model-rewrite layers` (ours or an alias "
                                                     "such as the authors' StyleGAN2 'layer8')")
    if latents:
        p.add_argument("--latents", choices=LATENT_SCHEMES, default=None,
                       help="how image numbers become latents: 'seeds' (ours, the default) or 'paper' (the original "
                            "authors' numbering, so their request files show the same images); edit files say which")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--cache-dir", default=None, help="statistics cache (default $MODEL_REWRITE_CACHE or ~/.cache/model-rewrite)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if seeds:
        p.add_argument("--seed", type=int_in(0, MAX_SEED), default=1000,
                       help="first seed of the images to render (default 1000)")
        p.add_argument("--samples", type=int_in(1, MAX_SEED_LIST), default=samples,
                       help=f"number of images (default {samples})")
        p.add_argument("--seeds", default=None, help="seeds as ranges and lists, e.g. '0-15' or '3,7,20-29' "
                                                     "(instead of --seed/--samples)")
        p.add_argument("--scale", type=int_in(1, 16), default=2, help="pixel scale of written grids (default 2, 1..16)")


def add_edit_config_flags(parser: argparse.ArgumentParser, update_title: str = "update") -> None:
    """The four config groups of a command that solves and reports edits: context directions, update,
    statistics, report (apply, suggest, replay-paper)."""
    from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig

    add_config_flags(parser, KeyConfig, "context directions")
    add_config_flags(parser, UpdateConfig, update_title)
    add_config_flags(parser, StatsConfig, "statistics")
    add_config_flags(parser, RenderConfig, "report")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of config dataclass `cls` (`rank` -> --rank), stored as "Cls.field"; the help
    gives the default and the range or choices declared in config.py."""
    group = parser.add_argument_group(title, f"override {cls.__name__} fields (default: the edit's or the built-in value)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        want = hints[f.name]
        rng, choices = field_range(cls, f.name), field_choices(cls, f.name)
        limits = f", {rng.text()}" if rng else f", one of {', '.join(choices)}" if choices else ""
        if want is bool:
            group.add_argument(flag, dest=f"{cls.__name__}.{f.name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {f.default})")
        else:
            group.add_argument(flag, dest=f"{cls.__name__}.{f.name}", type=want, default=None, metavar=want.__name__.upper(),
                               help=f"(default {f.default}{limits})")


def config_from_flags(args: argparse.Namespace, cls: type, base: Any = None) -> Any:
    """`base` (default: `cls()`) with the fields given on the command line replaced; a value the config
    refuses gives one InvalidEdit naming its flag."""
    base = base if base is not None else cls()
    changes = {f.name: getattr(args, f"{cls.__name__}.{f.name}", None) for f in dataclasses.fields(cls)}
    given = {k: v for k, v in changes.items() if v is not None}
    try:
        return dataclasses.replace(base, **given)
    except InvalidEdit as exc:
        text = str(exc)
        for name in given:
            text = text.replace(f"{cls.__name__}.{name}", "--" + name.replace("_", "-"))
        raise InvalidEdit(text) from None


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """The image numbers named by --seeds, or by --seed and --samples."""
    from .latents import parse_seeds

    if getattr(args, "seeds", None):
        return parse_seeds(args.seeds)
    if args.seed + args.samples - 1 > MAX_SEED:
        raise RewriteError(f"--seed and --samples must name seeds from 0 to {MAX_SEED}")
    return list(range(args.seed, args.seed + args.samples))


def rewriter_from_args(args: argparse.Namespace):
    """The Rewriter the flags describe (latents: --latents, else ours; `adopt_latents` may change it)."""
    from . import distributed
    from .rewrite import Rewriter

    device = distributed.init(args.device)  # under torchrun: join the group; seeds are shared out
    if not distributed.is_main():
        args.quiet = True
    return Rewriter(args.model, device=device, cache_dir=args.cache_dir, latents=getattr(args, "latents", None) or "seeds")


def load_edit_for(rw: Any, path: Path, args: argparse.Namespace):
    """An EditSpec (and saved factors) from our format, or from the authors' request format with --layer
    (an alias is stored under our name; masks are resized to the model's image size)."""
    from .paper_format import read_edit_or_request

    layer = rw.spec(args.layer).name if getattr(args, "layer", None) else None
    return read_edit_or_request(path, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer=layer,
                                resolution=rw.info.resolution, latents=rw.latent_scheme)


def load_edits_for(rw: Any, path: Path, args: argparse.Namespace) -> list[tuple[Path, Any, Any]]:
    """The edits of one file as (label, spec, factors): one for an edit or request file, several for an edit
    stack (format "model-rewrite-edit-stack", labelled STEM-1.json, STEM-2.json, ... in their order)."""
    from .edit_stack import is_edit_stack, load_edit_stack
    from .edits import read_edit_json

    if not is_edit_stack(read_edit_json(path)):
        return [(path, *load_edit_for(rw, path, args))]
    edits = load_edit_stack(path, max_side=rw.info.resolution)
    layer = rw.spec(args.layer).name if getattr(args, "layer", None) else None
    if layer and any(spec.layer != layer for spec, _ in edits):
        raise RewriteError(f"--layer {layer} differs from the layers of the stack {path} ({', '.join(s.layer for s, _ in edits)}); "
                          "drop --layer")
    return [(path.with_name(f"{path.stem}-{i + 1}.json"), spec, delta) for i, (spec, delta) in enumerate(edits)]


def adopt_latents(rw: Any, specs: Sequence[Any], args: argparse.Namespace) -> None:
    """Without --latents, use the latent scheme the edits were made with (when they agree), so that an edit
    file written with `--latents paper` re-applies without the flag."""
    schemes = {spec.latents for spec in specs}
    if getattr(args, "latents", None) is None and len(schemes) == 1:
        rw.latent_scheme = schemes.pop()


def with_flags(spec: Any, delta: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The edit with the command line's config overrides; its saved factors only while nothing changed."""
    changed = {name: config_from_flags(args, cls, getattr(spec, name))
               for name, cls in (("keys", KeyConfig), ("update", UpdateConfig), ("stats", StatsConfig))}
    if any(cfg != getattr(spec, name) for name, cfg in changed.items()) or getattr(args, "resolve", False):
        return dataclasses.replace(spec, **changed), None
    return spec, delta


def input_files(rw: Any, paths: list[Path]) -> list[Path]:
    """The files a command reads: the edit files, their factors, and the model's checkpoint."""
    from .edits import factors_path

    files = [*paths, *(factors_path(p) for p in paths)]
    return files + ([Path(rw.info.origin.path)] if rw.info.origin is not None else [])


def check_heat_direction(args: argparse.Namespace, specs: list[Any]) -> None:
    """--heat-direction must name one of every edit's directions (checked before any work)."""
    heat = config_from_flags(args, RenderConfig).heat_direction
    for spec in specs:
        if heat >= spec.keys.rank:
            raise InvalidEdit(f"--heat-direction {heat} is out of range: edit {spec.name or '(unnamed)'} has rank "
                              f"{spec.keys.rank}, so its directions are numbered 0 to {spec.keys.rank - 1}")
