"""The edit file format: painted Selections, the versioned EditSpec (JSON) and its solved factors
(safetensors beside it), and reading the original paper's request files.

This module is data only: it imports no forward-pass code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import atomic_write_bytes, load_tensors, save_tensors
from .config import KeyConfig, StatsConfig, UpdateConfig, config_from_dict, config_to_dict
from .errors import IncompatibleEdit, InvalidEdit
from .latents import check_latent_scheme
from .masks import data_url_from_mask, mask_from_data_url
from .update import LowRankDelta

EDIT_FORMAT = "model-rewrite-edit"
EDIT_VERSION = 3  # 2: the direction settings (rank, eig_floor) moved from "update" to "keys";
# 3: "query" (the match-selection), "latents" (how image numbers become latents), and "paste" may be null
# (a search request)
_SPEC_KEYS = {"format", "version", "name", "model", "fingerprint", "layer", "context", "copy", "paste", "keys",
              "update", "stats", "note", "query", "latents"}
_KEY_FIELDS_V1 = ("rank", "eig_floor")  # version 1 kept these in "update"


@dataclass(frozen=True)
class Selection:
    """A painted region on one generated image: the image's seed and a soft mask (H, W) in [0, 1]."""

    seed: int
    mask: torch.Tensor


@dataclass(frozen=True)
class EditSpec:
    """Everything needed to (re)solve one edit: model, layer, selections and configs.

    `fingerprint` is that of the unedited model the edit was made for; `copy` is None for the
    erase variant; an empty `context` means "the paste region is the context". `keys` and `stats`
    define the context directions; `update` how the change along them is solved.

    `paste` is None for a search request (context and/or query only: it ranks images, it cannot be
    applied). `query` is the match selection: `search` ranks images by its region's direction instead
    of the context's. `latents` says how the selections' image numbers become latents ("seeds", ours, or
    "paper", the original authors' numbering; latents.py).
    """

    model: str
    fingerprint: str
    layer: str
    paste: Selection | None
    copy: Selection | None = None
    context: tuple[Selection, ...] = ()
    update: UpdateConfig = field(default_factory=UpdateConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    name: str = ""
    note: str = ""
    keys: KeyConfig = field(default_factory=KeyConfig)
    query: Selection | None = None
    latents: str = "seeds"

    def __post_init__(self) -> None:
        check_latent_scheme(self.latents)

    @property
    def is_search_request(self) -> bool:
        """Whether this is a search request: no paste selection, so it ranks images but cannot be applied."""
        return self.paste is None

    @property
    def context_or_paste(self) -> tuple[Selection, ...]:
        """The selections whose keys define the directions: the context, or the paste region without one."""
        return self.context or ((self.paste,) if self.paste is not None else ())

    @property
    def search_selections(self) -> tuple[Selection, ...]:
        """The selections whose direction `search` ranks images by: the query if there is one, else the
        context (or paste region)."""
        return (self.query,) if self.query is not None else self.context_or_paste

    @property
    def selections(self) -> list[tuple[str, Selection]]:
        """Every selection with its role ("paste", "copy", "query", "context[i]"), for checks and messages."""
        out = [(role, s) for role, s in (("paste", self.paste), ("copy", self.copy), ("query", self.query)) if s is not None]
        return out + [(f"context[{i}]", s) for i, s in enumerate(self.context)]

    @property
    def selection_seeds(self) -> list[int]:
        """Seeds of every image the edit paints on (sorted, unique)."""
        return sorted({s.seed for _, s in self.selections})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (masks as PNG data URLs)."""
        sel = lambda s: {"seed": s.seed, "mask": data_url_from_mask(s.mask)}  # noqa: E731
        return {
            "format": EDIT_FORMAT,
            "version": EDIT_VERSION,
            "name": self.name,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "layer": self.layer,
            "context": [sel(s) for s in self.context],
            "copy": sel(self.copy) if self.copy is not None else None,
            "paste": sel(self.paste) if self.paste is not None else None,
            "query": sel(self.query) if self.query is not None else None,
            "latents": self.latents,
            "keys": config_to_dict(self.keys),
            "update": config_to_dict(self.update),
            "stats": config_to_dict(self.stats),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "EditSpec":
        """Parse and validate the JSON form; InvalidEdit names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidEdit("an edit file must hold a JSON object")
        if "format" not in data and set(data) & {"key", "object", "paste", "query"}:  # paper_format.is_paper_request
            raise InvalidEdit("this looks like the original paper's request format; load it with "
                              "model_rewrite.paper_format.edit_from_paper_request (CLI: pass --model and --layer)")
        if data.get("format") != EDIT_FORMAT:
            raise InvalidEdit(f"not a model-rewrite edit (format is {data.get('format')!r}, expected {EDIT_FORMAT!r})")
        if data.get("version") == 1:
            data = _upgrade_v1(data)
        if data.get("version") == 2:  # version 3 only added optional fields
            data = dict(data, version=EDIT_VERSION)
        if data.get("version") != EDIT_VERSION:
            raise IncompatibleEdit(f"edit format version {data.get('version')!r} is not supported "
                                   f"(this version reads 1 to {EDIT_VERSION})")
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise InvalidEdit(f"unknown key(s) {unknown} in edit; allowed keys are {sorted(_SPEC_KEYS)}")
        for k in ("model", "fingerprint", "layer"):
            if not isinstance(data.get(k), str) or not data[k]:
                raise InvalidEdit(f"edit field {k!r} must be a non-empty string")
        context = data.get("context") or []
        if not isinstance(context, list):
            raise InvalidEdit("edit field 'context' must be a list of selections")
        if data.get("paste") is None and not context and data.get("query") is None:
            raise InvalidEdit("edit needs a 'paste' selection (or, for a search request, a 'context' or 'query')")
        opt = lambda k: selection_from_dict(data[k], k) if data.get(k) is not None else None  # noqa: E731
        return cls(
            model=data["model"],
            fingerprint=data["fingerprint"],
            layer=data["layer"],
            paste=opt("paste"),
            copy=opt("copy"),
            query=opt("query"),
            latents=check_latent_scheme(data.get("latents", "seeds")),
            context=tuple(selection_from_dict(s, f"context[{i}]") for i, s in enumerate(context)),
            keys=config_from_dict(KeyConfig, data.get("keys")),
            update=config_from_dict(UpdateConfig, data.get("update")),
            stats=config_from_dict(StatsConfig, data.get("stats")),
            name=str(data.get("name", "")),
            note=str(data.get("note", "")),
        )


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 edit read as version 2: rank and eig_floor move from "update" to "keys"."""
    data = dict(data, version=EDIT_VERSION)
    update = data.get("update")
    if isinstance(update, dict) and "keys" not in data:
        data["keys"] = {k: update[k] for k in _KEY_FIELDS_V1 if k in update}
        data["update"] = {k: v for k, v in update.items() if k not in _KEY_FIELDS_V1}
    return data


def selection_from_dict(data: Any, what: str) -> Selection:
    """A Selection from {"seed": int, "mask": data URL}."""
    if not isinstance(data, dict) or set(data) - {"seed", "mask"} or "seed" not in data or "mask" not in data:
        raise InvalidEdit(f"{what} must be an object with exactly 'seed' and 'mask'")
    seed = data["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidEdit(f"{what}.seed must be a non-negative integer, got {seed!r}")
    return Selection(seed, mask_from_data_url(data["mask"]))


def factors_path(path: Path) -> Path:
    """The safetensors file holding an edit's solved factors, beside its JSON."""
    return path.with_suffix(".safetensors")


def save_edit(path: str | Path, spec: EditSpec, delta: LowRankDelta | None = None) -> Path:
    """Write the edit as JSON at `path` and, when given, its factors beside it. Atomic; returns the path."""
    path = Path(path)
    if path.suffix != ".json":
        raise InvalidEdit(f"edit files end in .json, got {path.name}")
    if delta is not None:
        if not delta.is_finite():
            raise InvalidEdit("refusing to save an edit whose solved factors hold NaN or infinite values")
        save_tensors(factors_path(path), {"factor": delta.factor, "dirs": delta.dirs},
                     {"param_path": delta.param_path, "key_axis": delta.key_axis, "fingerprint": spec.fingerprint,
                      "layer": spec.layer, "format": EDIT_FORMAT, "version": EDIT_VERSION})
    atomic_write_bytes(path, json.dumps(spec.to_dict(), indent=1).encode())
    return path


def read_edit_json(path: str | Path) -> Any:
    """The parsed JSON of an edit file; InvalidEdit when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidEdit(f"edit file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidEdit(f"edit file {path} is not valid JSON: {exc}") from None


def load_edit(path: str | Path) -> tuple[EditSpec, LowRankDelta | None]:
    """Read an edit JSON and, if present and matching, its solved factors."""
    path = Path(path)
    spec = EditSpec.from_dict(read_edit_json(path))
    fpath = factors_path(path)
    if not fpath.exists():
        return spec, None
    tensors, meta = load_tensors(fpath)
    if meta.get("fingerprint") != spec.fingerprint or meta.get("layer") != spec.layer:
        raise IncompatibleEdit(f"{fpath.name} was solved for another model or layer than {path.name}; delete it to re-solve")
    delta = LowRankDelta(meta["param_path"], int(meta["key_axis"]), tensors["factor"], tensors["dirs"])
    if not delta.is_finite():
        raise InvalidEdit(f"{fpath} holds NaN or infinite values; delete it to re-solve")
    return spec, delta


