"""Typed, frozen configuration dataclasses shared by the API, the CLI, edit files and the web app."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import InvalidEdit

T = TypeVar("T")


def bounded(default: Any, **bounds: float) -> Any:
    """A config field with bounds (`ge`, `gt`, `le`) in its metadata: checked when the config is built, and read
    by the web schemas (server/schemas.py) and the page (through /api/info), so one table drives all three."""
    return field(default=default, metadata={"bounds": bounds})


def field_bounds(cls: type) -> dict[str, dict[str, float]]:
    """{field: {"ge"|"gt"|"le": value}} of a config dataclass's bounded fields."""
    return {f.name: dict(f.metadata["bounds"]) for f in dataclasses.fields(cls) if "bounds" in f.metadata}


@dataclass(frozen=True)
class StatsConfig:
    """How the key statistics C = E[k k^T] of a layer are collected.

    `product_dtype="float32"` computes each batch's k^T k in float32 (about 4x cheaper than
    float64 on a CPU) and adds it to a float64 running sum; "float64" is exact throughout.
    """

    num_samples: int = 1000  # generated images whose keys (all locations) enter C
    stats_seed: int = 0  # seed of the latent stream used for statistics
    batch_size: int = 50  # images per forward pass (does not change the result)
    product_dtype: str = "float32"  # dtype of each batch's k^T k; the running sum is always float64

    def __post_init__(self) -> None:
        _check_ranges(self)
        if self.product_dtype not in _STATS_ALLOWED["product_dtype"]:
            raise InvalidEdit(f"StatsConfig.product_dtype must be one of {_STATS_ALLOWED['product_dtype']}")


@dataclass(frozen=True)
class KeyConfig:
    """What defines an edit's context directions D, besides its layer, context masks and StatsConfig.

    Every user of the directions (the solve, search, match overlays, reports) reads them through
    `Rewriter.directions`, which takes this config and the edit's StatsConfig.
    """

    rank: int = bounded(1, ge=1, le=64)  # rank r of the change: the number of context directions
    eig_floor: float = 1e-6  # relative floor on eigenvalues of C when whitening

    def __post_init__(self) -> None:
        _check_ranges(self)
        if not self.eig_floor >= 0 or self.eig_floor >= 1:
            raise InvalidEdit(f"KeyConfig.eig_floor must lie in [0, 1), got {self.eig_floor!r}")


REFERENCE_STEPS = 2001  # the authors' published schedule (niter), run by method "reference"


@dataclass(frozen=True)
class UpdateConfig:
    """How the weight update along the context directions is solved."""

    method: str = "optimize"  # "optimize" (constrained Adam, warm started), "closed_form", or "reference":
    # the authors' published algorithm (reference.py; steps, lr, loss, preserve, warm_start, tight_paste unused)
    steps: int = bounded(150, ge=0, le=10_000)  # Adam steps of the constrained optimisation (ref: 2000)
    lr: float = bounded(0.05, gt=0.0, le=10.0)  # Adam learning rate (ref: 0.05)
    loss: str = "l1"  # "l1" (ref) or "l2"
    warm_start: bool = True  # start the optimisation from the closed form
    tight_paste: bool = True  # goal loss only inside the pasted box (ref default)
    preserve: float = 1.0  # weight of keeping the paste image unchanged outside the box (ref: 0)
    erase: bool = False  # erase variant: the goal zeroes the units that fire in the context
    erase_units: int = 30  # units zeroed by the erase variant (ref: 30 or 60)
    ridge: float = 1e-4  # relative ridge of the closed-form least squares

    @property
    def planned_steps(self) -> int:
        """How many optimisation steps a solve with this config runs (0 for the closed form)."""
        return {"optimize": self.steps, "reference": REFERENCE_STEPS}.get(self.method, 0)

    def __post_init__(self) -> None:
        _check_ranges(self)
        for name, allowed in _ALLOWED.items():
            if getattr(self, name) not in allowed:
                raise InvalidEdit(f"UpdateConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RenderConfig:
    """How previews and reports are made."""

    fire_quantile: float = 0.98  # a location "fires" when its heat exceeds this quantile
    heat_direction: int = 0  # index of the context direction that draws the heat map (0: the strongest)

    def __post_init__(self) -> None:
        _check_ranges(self)


_ALLOWED = {"method": ("optimize", "closed_form", "reference"), "loss": ("l1", "l2")}
_STATS_ALLOWED = {"product_dtype": ("float32", "float64")}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build `cls` from a dict, rejecting unknown keys, wrong types and invalid values.

    Missing keys take the defaults, so old files keep working when fields are added.
    """
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidEdit(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidEdit(
            f"unknown {cls.__name__} key(s) {unknown}; allowed keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        want = hints[name]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if want is int and isinstance(value, bool) or not isinstance(value, want):
            raise InvalidEdit(
                f"{cls.__name__}.{name} must be {want.__name__}, got {value!r}"
            )
        kwargs[name] = value
    return cls(**kwargs)


def _check_ranges(cfg: Any) -> None:
    for name, b in field_bounds(type(cfg)).items():
        value = getattr(cfg, name)
        if not (value >= b.get("ge", value) and ("gt" not in b or value > b["gt"]) and value <= b.get("le", value)):
            low = f"at least {b['ge']}" if "ge" in b else f"more than {b['gt']}"
            raise InvalidEdit(f"{type(cfg).__name__}.{name} must be {low} and at most {b['le']}, got {value!r}")
    positive = ("rank", "num_samples", "batch_size", "erase_units")
    if hasattr(cfg, "heat_direction") and cfg.heat_direction < 0:
        raise InvalidEdit("RenderConfig.heat_direction must be 0 or more (0 is the strongest direction)")
    for name in positive:
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            raise InvalidEdit(f"{type(cfg).__name__}.{name} must be at least 1")
    if hasattr(cfg, "steps") and cfg.steps < 0:
        raise InvalidEdit("UpdateConfig.steps must be 0 or more")
    if hasattr(cfg, "lr") and not cfg.lr > 0:
        raise InvalidEdit("UpdateConfig.lr must be positive")
    if hasattr(cfg, "fire_quantile") and not 0.0 < cfg.fire_quantile < 1.0:
        raise InvalidEdit("RenderConfig.fire_quantile must lie strictly between 0 and 1")
