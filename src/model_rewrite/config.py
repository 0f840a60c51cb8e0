"""Typed, frozen configuration dataclasses shared by the API, the CLI, edit files and the web app.

Every field is checked where the config is made (`__post_init__`), so the library, edit files, the CLI and
the web app share one set of rules: the right type (an int is accepted where a float is due), finite, and
inside its documented range. Each numeric field declares its range with `bounded(...)`; the CLI's help and
the web API's schema read the ranges from here (`field_range`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from .errors import InvalidEdit

T = TypeVar("T")

MAX_SEED = 2**31 - 1  # the largest seed of an image or a statistics stream (latents.MAX_SEED)
MAX_RANK = 256  # the most context directions of one edit
REFERENCE_STEPS = 2001  # the authors' published schedule (niter), run by method "reference"


class Range(NamedTuple):
    """The values a numeric field accepts: lo <= x <= hi, with an open end where `lo_open` / `hi_open`."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def text(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def bounded(default: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field with a default and the range its values must lie in."""
    return dataclasses.field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def choice(default: str, *allowed: str) -> Any:
    """A dataclass field whose value is one of `allowed`."""
    return dataclasses.field(default=default, metadata={"choices": (default, *allowed)})


@dataclass(frozen=True)
class StatsConfig:
    """How the key statistics C = E[k k^T] of a layer are collected.

    `product_dtype="float32"` computes each batch's k^T k in float32 (about 4x cheaper than
    float64 on a CPU) and adds it to a float64 running sum; "float64" is exact throughout.
    """

    num_samples: int = bounded(1000, 1, 100_000)  # generated images whose keys (all locations) enter C
    stats_seed: int = bounded(0, 0, MAX_SEED)  # seed of the latent stream used for statistics
    batch_size: int = bounded(50, 1, 1024)  # images per forward pass (does not change the result)
    product_dtype: str = choice("float32", "float64")  # dtype of each batch's k^T k; the running sum is always float64

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class KeyConfig:
    """What defines an edit's context directions D, besides its layer, context masks and StatsConfig.

    Every user of the directions (the solve, search, match overlays, reports) reads them through
    `Rewriter.directions`, which takes this config and the edit's StatsConfig.
    """

    rank: int = bounded(1, 1, MAX_RANK)  # rank r of the change: the number of context directions
    eig_floor: float = bounded(1e-6, 0.0, 1.0, hi_open=True)  # relative floor on eigenvalues of C when whitening

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class UpdateConfig:
    """How the weight update along the context directions is solved."""

    method: str = choice("optimize", "closed_form", "reference")  # "optimize" (constrained Adam, warm started),
    # "closed_form", or "reference": the authors' published algorithm (reference.py; steps, lr, loss, preserve,
    # warm_start, tight_paste unused)
    steps: int = bounded(150, 0, 20_000)  # Adam steps of the constrained optimisation (ref: 2000)
    lr: float = bounded(0.05, 0.0, 10.0, lo_open=True)  # Adam learning rate (ref: 0.05)
    loss: str = choice("l1", "l2")  # "l1" (ref) or "l2"
    warm_start: bool = True  # start the optimisation from the closed form
    tight_paste: bool = True  # goal loss only inside the pasted box (ref default)
    preserve: float = bounded(1.0, 0.0, 1000.0)  # weight of keeping the paste image unchanged outside the box (ref: 0)
    erase: bool = False  # erase variant: the goal zeroes the units that fire in the context
    erase_units: int = bounded(30, 1, 4096)  # units zeroed by the erase variant (ref: 30 or 60)
    ridge: float = bounded(1e-4, 0.0, 100.0)  # relative ridge of the closed-form least squares

    @property
    def planned_steps(self) -> int:
        """How many optimisation steps a solve with this config runs (0 for the closed form)."""
        return {"optimize": self.steps, "reference": REFERENCE_STEPS}.get(self.method, 0)

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class RenderConfig:
    """How previews and reports are made."""

    fire_quantile: float = bounded(0.98, 0.0, 1.0, lo_open=True, hi_open=True)  # a location "fires" when its
    # heat exceeds this quantile
    heat_direction: int = bounded(0, 0, MAX_RANK - 1)  # index of the context direction that draws the heat map
    # (0: the strongest)

    def __post_init__(self) -> None:
        check_config(self)


CONFIG_CLASSES = (StatsConfig, KeyConfig, UpdateConfig, RenderConfig)


def field_range(cls: type, name: str) -> Range | None:
    """The range of numeric field `name` of config class `cls` (None for a field without one)."""
    return _fields(cls)[name][1]


def field_bounds(cls: type) -> dict[str, dict[str, float]]:
    """{field: {"ge"|"gt": lo, "le"|"lt": hi}} of a config class's ranged fields, as the web page reads them."""
    out = {}
    for name, (_, rng, _) in _fields(cls).items():
        if rng is not None:
            out[name] = {"gt" if rng.lo_open else "ge": rng.lo, "lt" if rng.hi_open else "le": rng.hi}
    return out


def field_choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of string field `name` of config class `cls` (None when any string goes)."""
    return _fields(cls)[name][2]


@functools.cache
def _fields(cls: type) -> dict[str, tuple[type, Range | None, tuple[str, ...] | None]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("range"), f.metadata.get("choices"))
            for f in dataclasses.fields(cls)}


def check_config(cfg: Any) -> None:
    """Check every field of a config dataclass: its type, finite, in its range or among its choices.
    An int given for a float field is stored as that float. InvalidEdit names the field and what it takes."""
    cls = type(cfg)
    for name, (want, rng, choices) in _fields(cls).items():
        value = getattr(cfg, name)
        where = f"{cls.__name__}.{name}"
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(cfg, name, value)
        if (want is int and isinstance(value, bool)) or not isinstance(value, want):
            raise InvalidEdit(f"{where} must be {want.__name__}, got {value!r}")
        if want is float and not math.isfinite(value):
            raise InvalidEdit(f"{where} must be a finite number, got {value!r}")
        if rng is not None and not rng.holds(value):
            raise InvalidEdit(f"{where} must lie in {rng.text()}, got {value!r}")
        if choices is not None and value not in choices:
            raise InvalidEdit(f"{where} must be one of {choices}, got {value!r}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build `cls` from a dict, rejecting unknown keys, wrong types and invalid values (InvalidEdit).

    Missing keys take the defaults, so old files keep working when fields are added.
    """
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidEdit(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = _fields(cls)
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise InvalidEdit(f"unknown {cls.__name__} key(s) {unknown}; allowed keys are {sorted(fields)}")
    return cls(**data)
