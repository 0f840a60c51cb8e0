"""Argument helpers of the `model-rewrite` command: flags generated from the config dataclasses, seeds from
--seed/--samples/--seeds, edits with flag overrides, and progress bars."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from .config import KeyConfig, StatsConfig, UpdateConfig
from .errors import RewriteError


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of config dataclass `cls` (`rank` -> --rank), stored as "Cls.field"."""
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


def config_from_flags(args: argparse.Namespace, cls: type, base: Any = None) -> Any:
    """`base` (default: `cls()`) with the fields given on the command line replaced (and validated)."""
    base = base if base is not None else cls()
    changes = {f.name: getattr(args, f"{cls.__name__}.{f.name}", None) for f in dataclasses.fields(cls)}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """The images a command renders: --seeds (ranges and lists) or --seed/--samples."""
    from .latents import MAX_SEED, parse_seeds

    if getattr(args, "seeds", None):
        return parse_seeds(args.seeds)
    if args.samples < 1:
        raise RewriteError("--samples must be at least 1")
    if args.seed < 0 or args.seed + args.samples - 1 > MAX_SEED:
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


