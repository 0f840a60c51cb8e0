"""Argument helpers of the `model-rewrite` command: a parser whose errors are one line, bounded integer
arguments, flags generated from the config dataclasses (with their ranges), seeds from --seed/--samples/--seeds,
edits with flag overrides, and progress bars."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from .config import MAX_SEED, KeyConfig, RenderConfig, StatsConfig, UpdateConfig, field_choices, field_range
from .errors import InvalidEdit, RewriteError


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
    """The images a command renders: --seeds (ranges and lists) or --seed/--samples."""
    from .latents import parse_seeds

    if getattr(args, "seeds", None):
        return parse_seeds(args.seeds)
    if args.seed + args.samples - 1 > MAX_SEED:
        raise RewriteError(f"--seed and --samples must name seeds from 0 to {MAX_SEED}")
    return list(range(args.seed, args.seed + args.samples))


class Progress:
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


def with_flags(spec: Any, delta: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The edit with the command line's config overrides; its saved factors only while nothing changed."""
    changed = {name: config_from_flags(args, cls, getattr(spec, name))
               for name, cls in (("keys", KeyConfig), ("update", UpdateConfig), ("stats", StatsConfig))}
    if any(cfg != getattr(spec, name) for name, cfg in changed.items()) or getattr(args, "resolve", False):
        return dataclasses.replace(spec, **changed), None
    return spec, delta


def load_edit_for(rw: Any, path: Path, args: argparse.Namespace):
    """An EditSpec (and saved factors) from our format, or from the paper's format with --layer."""
    from .paper_format import read_edit_or_request

    return read_edit_or_request(path, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer=args.layer,
                                max_side=rw.info.resolution)


def input_files(rw: Any, paths: list[Path]) -> list[Path]:
    """The files a command reads: the edit files, their factors, and the model's checkpoint."""
    from .edits import factors_path

    files = [*paths, *(factors_path(p) for p in paths)]
    return files + ([Path(rw.info.origin.path)] if rw.info.origin is not None else [])


def solve_with_progress(rw: Any, spec: Any, quiet: bool) -> Any:
    """Solve `spec` with a progress bar of its steps (none with `quiet`)."""
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


def check_heat_direction(args: argparse.Namespace, specs: list[Any]) -> None:
    """--heat-direction must name one of every edit's directions (checked before any work)."""
    heat = config_from_flags(args, RenderConfig).heat_direction
    for spec in specs:
        if heat >= spec.keys.rank:
            raise InvalidEdit(f"--heat-direction {heat} is out of range: edit {spec.name or '(unnamed)'} has rank "
                              f"{spec.keys.rank}, so its directions are numbered 0 to {spec.keys.rank - 1}")
