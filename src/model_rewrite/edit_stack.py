"""The edit-stack file: several edits applied in order, in one JSON file (format "model-rewrite-edit-stack",
version 1) with their solved factors in one safetensors file beside it.

The JSON holds the model's identity and a list of edit JSONs (`EditSpec.to_dict()`, each readable on its own);
the factors file holds `<i>.factor` and `<i>.dirs` for each solved edit i, and its metadata says which edits
have factors (an edit without them is solved again when the stack is applied, against the model with the
edits before it applied, as each was solved). `model-rewrite apply`, `export` and the web app read it;
`read_edits` reads either kind of file. Data only: no forward-pass code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from .cache import atomic_write_bytes, load_tensors, save_tensors
from .edits import EditSpec, factors_path, load_edit, read_edit_json
from .errors import IncompatibleEdit, InvalidEdit
from .update import LowRankDelta

STACK_FORMAT = "model-rewrite-edit-stack"
STACK_VERSION = 1
_STACK_KEYS = {"format", "version", "name", "model", "fingerprint", "latents", "edits", "note"}
Solved = tuple[EditSpec, "LowRankDelta | None"]


def is_edit_stack(data: Any) -> bool:
    """Whether parsed JSON claims to be an edit-stack file."""
    return isinstance(data, dict) and data.get("format") == STACK_FORMAT


def stack_to_dict(specs: Sequence[EditSpec], name: str = "", note: str = "") -> dict[str, Any]:
    """The JSON form of a stack of edits (all made for one model and latent scheme)."""
    if not specs:
        raise InvalidEdit("an edit stack needs at least one edit")
    first = specs[0]
    for spec in specs[1:]:
        if (spec.model, spec.fingerprint, spec.latents) != (first.model, first.fingerprint, first.latents):
            raise InvalidEdit(f"the edits of a stack must be made for one model: {spec.name!r} is for {spec.model!r} "
                              f"({spec.fingerprint}, latents {spec.latents}), {first.name!r} for {first.model!r}")
    return {"format": STACK_FORMAT, "version": STACK_VERSION, "name": name, "model": first.model,
            "fingerprint": first.fingerprint, "latents": first.latents, "note": note,
            "edits": [spec.to_dict() for spec in specs]}


def stack_from_dict(data: Any, *, max_side: int | None = None) -> list[EditSpec]:
    """The edits of a stack's JSON form, in order; InvalidEdit / IncompatibleEdit name what is wrong. Masks
    over `max_side` pixels on a side are refused from their headers (EditSpec.from_dict)."""
    if not is_edit_stack(data):
        raise InvalidEdit(f"not a model-rewrite edit stack (format is {data.get('format') if isinstance(data, dict) else None!r},"
                          f" expected {STACK_FORMAT!r})")
    if data.get("version") != STACK_VERSION:
        raise IncompatibleEdit(f"edit stack version {data.get('version')!r} is not supported (this version reads {STACK_VERSION})")
    unknown = sorted(set(data) - _STACK_KEYS)
    if unknown:
        raise InvalidEdit(f"unknown key(s) {unknown} in edit stack; allowed keys are {sorted(_STACK_KEYS)}")
    edits = data.get("edits")
    if not isinstance(edits, list) or not edits:
        raise InvalidEdit("edit stack field 'edits' must be a non-empty list of edits")
    specs = []
    for i, item in enumerate(edits):
        try:
            spec = EditSpec.from_dict(item, max_side=max_side)
        except (InvalidEdit, IncompatibleEdit) as exc:
            raise type(exc)(f"edit {i + 1} of the stack: {exc}") from None
        if spec.fingerprint != data.get("fingerprint"):
            raise InvalidEdit(f"edit {i + 1} of the stack ({spec.name!r}) was made for another model than the stack")
        specs.append(spec)
    return specs


def save_edit_stack(path: str | Path, edits: Sequence[Solved], name: str = "", note: str = "") -> Path:
    """Write a stack of (spec, factors or None) at `path` (.json) with the factors beside it. Atomic; returns
    the path. A stack without any factors removes a stale factors file."""
    path = Path(path)
    if path.suffix != ".json":
        raise InvalidEdit(f"edit files end in .json, got {path.name}")
    data = stack_to_dict([spec for spec, _ in edits], name, note)
    tensors, solved = {}, []
    for i, (spec, delta) in enumerate(edits):
        if delta is None:
            solved.append(None)
            continue
        if not delta.is_finite():
            raise InvalidEdit(f"refusing to save edit {spec.name!r}: its solved factors hold NaN or infinite values")
        tensors[f"{i}.factor"], tensors[f"{i}.dirs"] = delta.factor, delta.dirs
        solved.append({"param_path": delta.param_path, "key_axis": delta.key_axis, "layer": spec.layer})
    fpath = factors_path(path)
    if tensors:
        save_tensors(fpath, tensors, {"format": STACK_FORMAT, "version": STACK_VERSION, "fingerprint": data["fingerprint"],
                                      "edits": solved, "edits_sha256": _digest(data)})
    elif fpath.exists():
        fpath.unlink()
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    return path


def _digest(data: dict[str, Any]) -> str:
    """Names the JSON's edits: kept in the factors' metadata, so factors never pair with another save's JSON."""
    return hashlib.sha256(json.dumps(data["edits"], sort_keys=True).encode()).hexdigest()


def load_edit_stack(path: str | Path, *, max_side: int | None = None) -> list[Solved]:
    """The edits of a stack file, in order, each with its saved factors (or None)."""
    path = Path(path)
    data = read_edit_json(path)
    specs = stack_from_dict(data, max_side=max_side)
    fpath = factors_path(path)
    if not fpath.exists():
        return [(spec, None) for spec in specs]
    tensors, meta = load_tensors(fpath)
    solved = meta.get("edits")
    if meta.get("format") != STACK_FORMAT or meta.get("fingerprint") != specs[0].fingerprint or \
            meta.get("edits_sha256") != _digest(data) or not isinstance(solved, list) or len(solved) != len(specs):
        raise IncompatibleEdit(f"{fpath.name} does not hold the factors of the stack {path.name}; delete it to re-solve")
    out: list[Solved] = []
    for i, (spec, item) in enumerate(zip(specs, solved)):
        if item is None:
            out.append((spec, None))
            continue
        if item.get("layer") != spec.layer:
            raise IncompatibleEdit(f"{fpath.name}: the factors of edit {i + 1} were solved for another layer; delete it to re-solve")
        delta = LowRankDelta(item["param_path"], int(item["key_axis"]), tensors[f"{i}.factor"], tensors[f"{i}.dirs"])
        if not delta.is_finite():
            raise InvalidEdit(f"{fpath} holds NaN or infinite values; delete it to re-solve")
        out.append((spec, delta))
    return out


def read_edits(path: str | Path, *, max_side: int | None = None) -> list[Solved]:
    """The edits of an edit file (one) or an edit-stack file (several, in order), with their saved factors;
    masks over `max_side` pixels on a side are refused from their headers."""
    path = Path(path)
    if is_edit_stack(read_edit_json(path)):
        return load_edit_stack(path, max_side=max_side)
    return [load_edit(path, max_side=max_side)]
