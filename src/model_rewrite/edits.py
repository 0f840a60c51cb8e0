"""The edit file format: painted Selections, the versioned EditSpec (JSON) and its solved factors
(safetensors beside it), and reading the original paper's request files.

This module is data only: it imports no forward-pass code."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import json_bytes, stage, tensors_bytes, tensors_from_bytes
from .config import MAX_SEED, KeyConfig, StatsConfig, UpdateConfig, config_from_dict, config_to_dict
from .errors import CorruptCache, IncompatibleEdit, InvalidEdit
from .latents import check_latent_scheme
from .masks import data_url_from_mask, mask_from_data_url
from .update import LowRankDelta

EDIT_FORMAT = "model-rewrite-edit"
EDIT_VERSION = 3  # 2: the direction settings (rank, eig_floor) moved from "update" to "keys";
# 3: "query" (the match-selection), "latents" (how image numbers become latents), and "paste" may be null
# (a search request)
_SPEC_KEYS = {"format", "version", "name", "model", "fingerprint", "layer", "context", "copy", "paste", "keys",
              "update", "stats", "note", "query", "latents", "factors_sha256"}
# "factors_sha256": the sha256 of the factors file saved with the edit (NAME.safetensors), null for an edit saved
# without factors; files written before it existed lack it (their factors are read as before).
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
    def from_dict(cls, data: Any, *, max_side: int | None = None) -> "EditSpec":
        """Parse and validate the JSON form; InvalidEdit names what is wrong. Masks over `max_side` pixels on
        a side (the model's image side, when known) are refused before they are decoded."""
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
        context = data.get("context")
        if context is None:
            context = []
        if not isinstance(context, list):
            raise InvalidEdit(f"edit field 'context' must be a list of selections, got {type(context).__name__}")
        if data.get("paste") is None and not context and data.get("query") is None:
            raise InvalidEdit("edit needs a 'paste' selection (or, for a search request, a 'context' or 'query')")
        for k in ("name", "note"):
            if not isinstance(data.get(k, ""), str):
                raise InvalidEdit(f"edit field {k!r} must be a string, got {type(data[k]).__name__}")
        sides = {"max_side": max_side}
        opt = lambda k: selection_from_dict(data[k], k, **sides) if data.get(k) is not None else None  # noqa: E731
        return cls(
            model=data["model"],
            fingerprint=data["fingerprint"],
            layer=data["layer"],
            paste=opt("paste"),
            copy=opt("copy"),
            query=opt("query"),
            latents=check_latent_scheme(data.get("latents", "seeds")),
            context=tuple(selection_from_dict(s, f"context[{i}]", **sides) for i, s in enumerate(context)),
            keys=config_from_dict(KeyConfig, data.get("keys")),
            update=config_from_dict(UpdateConfig, data.get("update")),
            stats=config_from_dict(StatsConfig, data.get("stats")),
            name=data.get("name", ""),
            note=data.get("note", ""),
        )


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 edit read as version 2: rank and eig_floor move from "update" to "keys"."""
    data = dict(data, version=EDIT_VERSION)
    update = data.get("update")
    if isinstance(update, dict) and "keys" not in data:
        data["keys"] = {k: update[k] for k in _KEY_FIELDS_V1 if k in update}
        data["update"] = {k: v for k, v in update.items() if k not in _KEY_FIELDS_V1}
    return data


def check_made_for(name: Any, model: Any, fingerprint: Any, loaded_model: str, loaded_fingerprint: str) -> None:
    """IncompatibleEdit unless an edit made for (`model`, `fingerprint`) fits the loaded model: the message
    names the edit's model and the loaded one, and how to load the right one."""
    if fingerprint != loaded_fingerprint:
        raise IncompatibleEdit(
            f"edit {name or '(unnamed)'} was made for model {model!r} with fingerprint {fingerprint}, but the "
            f"loaded model {loaded_model!r} has fingerprint {loaded_fingerprint}; load the model the edit was made "
            f"for (--model {model})")


def selection_from_dict(data: Any, what: str, max_side: int | None = None) -> Selection:
    """A Selection from {"seed": int, "mask": PNG data URL}; the mask's header is checked against `max_side`
    before it is decoded."""
    if not isinstance(data, dict) or set(data) - {"seed", "mask"} or "seed" not in data or "mask" not in data:
        raise InvalidEdit(f"{what} must be an object with exactly 'seed' and 'mask'")
    seed = data["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InvalidEdit(f"{what}.seed must be a non-negative integer (0 to {MAX_SEED}), got {seed!r}")
    try:
        return Selection(seed, mask_from_data_url(data["mask"], max_side))
    except InvalidEdit as exc:
        raise InvalidEdit(f"{what}: {exc}") from None


def factors_path(path: Path) -> Path:
    """The safetensors file holding an edit's solved factors, beside its JSON."""
    return path.with_suffix(".safetensors")


def save_edit(path: str | Path, spec: EditSpec, delta: LowRankDelta | None = None) -> Path:
    """Write the edit as JSON at `path` and, when given, its factors beside it; returns the path.

    One atomic unit: both files are written to temporaries first, then renamed, the JSON last; the JSON holds
    the sha256 of the factors file, which `load_edit` checks, so a JSON is never read with another save's
    factors. If renaming the JSON fails, the factors file it would have replaced is put back. Without
    `delta`, the JSON says so (`factors_sha256: null`) and a factors file left beside it is removed."""
    path = Path(path)
    if path.suffix != ".json":
        raise InvalidEdit(f"edit files end in .json, got {path.name}")
    fpath = factors_path(path)
    data = spec.to_dict()
    blob = None
    if delta is not None:
        if not delta.is_finite():
            raise InvalidEdit("refusing to save an edit whose solved factors hold NaN or infinite values")
        blob = tensors_bytes({"factor": delta.factor, "dirs": delta.dirs},
                             {"param_path": delta.param_path, "key_axis": delta.key_axis, "fingerprint": spec.fingerprint,
                              "layer": spec.layer, "format": EDIT_FORMAT, "version": EDIT_VERSION})
    data["factors_sha256"] = hashlib.sha256(blob).hexdigest() if blob is not None else None
    staged = []
    try:
        json_tmp = stage(path, lambda f: f.write(json_bytes(data)))
        staged.append(json_tmp)
        if blob is None:
            os.replace(json_tmp, path)
            fpath.unlink(missing_ok=True)  # the JSON says "no factors": a file left beside it is never read
            return path
        factors_tmp = stage(fpath, lambda f: f.write(blob))
        staged.append(factors_tmp)
        backup = None
        if fpath.exists():
            backup = stage(fpath, lambda f: None)
            staged.append(backup)
            os.replace(fpath, backup)  # the old factors, kept until the new JSON is in place
        try:
            os.replace(factors_tmp, fpath)
            os.replace(json_tmp, path)
        except BaseException:
            if backup is not None:
                os.replace(backup, fpath)
            else:
                fpath.unlink(missing_ok=True)
            raise
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    return path


def read_edit_json(path: str | Path) -> Any:
    """The parsed JSON of an edit file; InvalidEdit when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidEdit(f"edit file {path} does not exist") from None
    except OSError as exc:
        raise InvalidEdit(f"cannot read edit file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEdit(f"edit file {path} is not valid JSON: {exc}") from None


_NO_HASH = object()


def load_edit(path: str | Path, *, max_side: int | None = None) -> tuple[EditSpec, LowRankDelta | None]:
    """Read an edit JSON and its solved factors, when saved with it: a factors file whose sha256 is not the
    one the JSON holds is refused (IncompatibleEdit); the JSON's `factors_sha256: null` means none. Files
    without the checksum (written before it existed) take the factors beside them when model and layer agree."""
    path = Path(path)
    data = read_edit_json(path)
    spec = EditSpec.from_dict(data, max_side=max_side)
    want = data.get("factors_sha256", _NO_HASH)
    fpath = factors_path(path)
    if want is None or not fpath.exists():
        return spec, None
    try:
        blob = fpath.read_bytes()
    except OSError as exc:
        raise InvalidEdit(f"cannot read the factors {fpath}: {exc.strerror or exc}; delete it to solve the edit "
                          "again") from None
    if want is not _NO_HASH and hashlib.sha256(blob).hexdigest() != want:
        raise IncompatibleEdit(f"{fpath.name} is not the factors file saved with {path.name} (its sha256 differs: "
                               "a save was interrupted, or the files were mixed); delete it to solve the edit again")
    return spec, _delta_from_bytes(blob, fpath, spec)


def _delta_from_bytes(blob: bytes, fpath: Path, spec: EditSpec) -> LowRankDelta:
    try:
        tensors, meta = tensors_from_bytes(blob, fpath)
    except CorruptCache as exc:
        raise InvalidEdit(f"{exc}; delete it to solve the edit again") from None
    if meta.get("fingerprint") != spec.fingerprint or meta.get("layer") != spec.layer:
        raise IncompatibleEdit(f"{fpath.name} was solved for another model or layer than the edit; delete it to re-solve")
    factor, dirs, param_path, key_axis = (tensors.get("factor"), tensors.get("dirs"), meta.get("param_path"),
                                          meta.get("key_axis"))
    problem = ("it has no 'factor' tensor" if not isinstance(factor, torch.Tensor) else
               "it has no 'dirs' tensor" if not isinstance(dirs, torch.Tensor) else
               "its metadata has no 'param_path'" if not isinstance(param_path, str) else
               "its metadata's 'key_axis' is not 0 or 1" if key_axis not in (0, 1) or isinstance(key_axis, bool) else
               "its tensors are not floating point" if not (factor.is_floating_point() and dirs.is_floating_point()) else
               "its tensors do not fit together" if dirs.dim() != 2 or factor.dim() < 2 or
               factor.shape[key_axis] != dirs.shape[0] else "")
    if problem:
        raise InvalidEdit(f"{fpath} is not a factors file of an edit: {problem}; delete it to solve the edit again")
    delta = LowRankDelta(param_path, int(key_axis), factor, dirs)
    if not delta.is_finite():
        raise InvalidEdit(f"{fpath} holds NaN or infinite values; delete it to re-solve")
    return delta
