"""Edits as data: the versioned EditSpec (JSON + safetensors factors) and the exact EditStack."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .cache import atomic_write_bytes, load_tensors, save_tensors
from .config import StatsConfig, UpdateConfig, config_from_dict, config_to_dict
from .errors import IncompatibleEdit, InvalidEdit
from .masks import data_url_from_mask, mask_from_data_url
from .targets import Selection
from .update import LowRankDelta

EDIT_FORMAT = "model-rewrite-edit"
EDIT_VERSION = 1
_SPEC_KEYS = {"format", "version", "name", "model", "fingerprint", "layer", "context", "copy", "paste", "update", "stats", "note"}


@dataclass(frozen=True)
class EditSpec:
    """Everything needed to (re)solve one edit: model, layer, selections and configs.

    `fingerprint` is that of the unedited model the edit was made for; `copy` is None for the
    erase variant; an empty `context` means "the paste region is the context".
    """

    model: str
    fingerprint: str
    layer: str
    paste: Selection
    copy: Selection | None = None
    context: tuple[Selection, ...] = ()
    update: UpdateConfig = field(default_factory=UpdateConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    name: str = ""
    note: str = ""

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
            "paste": sel(self.paste),
            "update": config_to_dict(self.update),
            "stats": config_to_dict(self.stats),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "EditSpec":
        """Parse and validate the JSON form; InvalidEdit names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidEdit("an edit file must hold a JSON object")
        if is_paper_request(data):
            raise InvalidEdit("this looks like the original paper's request format; load it with "
                              "edit_from_paper_request (CLI: pass --model and --layer)")
        if data.get("format") != EDIT_FORMAT:
            raise InvalidEdit(f"not a model-rewrite edit (format is {data.get('format')!r}, expected {EDIT_FORMAT!r})")
        if data.get("version") != EDIT_VERSION:
            raise IncompatibleEdit(f"edit format version {data.get('version')!r} is not supported (this version reads {EDIT_VERSION})")
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise InvalidEdit(f"unknown key(s) {unknown} in edit; allowed keys are {sorted(_SPEC_KEYS)}")
        for k in ("model", "fingerprint", "layer"):
            if not isinstance(data.get(k), str) or not data[k]:
                raise InvalidEdit(f"edit field {k!r} must be a non-empty string")
        if data.get("paste") is None:
            raise InvalidEdit("edit needs a 'paste' selection")
        context = data.get("context") or []
        if not isinstance(context, list):
            raise InvalidEdit("edit field 'context' must be a list of selections")
        return cls(
            model=data["model"],
            fingerprint=data["fingerprint"],
            layer=data["layer"],
            paste=selection_from_dict(data["paste"], "paste"),
            copy=selection_from_dict(data["copy"], "copy") if data.get("copy") is not None else None,
            context=tuple(selection_from_dict(s, f"context[{i}]") for i, s in enumerate(context)),
            update=config_from_dict(UpdateConfig, data.get("update")),
            stats=config_from_dict(StatsConfig, data.get("stats")),
            name=str(data.get("name", "")),
            note=str(data.get("note", "")),
        )

    def check_model(self, model_id: str, fingerprint: str, layers: list[str]) -> None:
        """IncompatibleEdit unless this edit was made for this model (by fingerprint) and layer."""
        if self.fingerprint != fingerprint:
            raise IncompatibleEdit(
                f"edit {self.name or '(unnamed)'} was made for model {self.model!r} with fingerprint "
                f"{self.fingerprint}, but the loaded model {model_id!r} has fingerprint {fingerprint}; "
                f"load the model the edit was made for (--model {self.model})"
            )
        if self.layer not in layers:
            raise IncompatibleEdit(f"edit layer {self.layer!r} is not an editable layer of this model ({layers})")


def selection_from_dict(data: Any, what: str) -> Selection:
    """A Selection from {"seed": int, "mask": data URL}."""
    if not isinstance(data, dict) or set(data) - {"seed", "mask"} or "seed" not in data or "mask" not in data:
        raise InvalidEdit(f"{what} must be an object with exactly 'seed' and 'mask'")
    seed = data["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidEdit(f"{what}.seed must be a non-negative integer, got {seed!r}")
    return Selection(seed, mask_from_data_url(data["mask"]))


def edit_from_paper_request(request: Any, *, model: str, fingerprint: str, layer: str, update: UpdateConfig | None = None) -> EditSpec:
    """Convert the original paper's request (`key`, `object`, `paste` lists of [imgnum, data-url]).

    The image number becomes our seed; the paper's files do not name their model or layer, so the
    caller must.
    """
    if not isinstance(request, dict) or "paste" not in request:
        raise InvalidEdit("a paper-format request is an object with 'paste' (and 'key', 'object') entries")
    unknown = sorted(set(request) - {"key", "object", "paste"})
    if unknown:
        raise InvalidEdit(f"unknown key(s) {unknown} in the paper-format request (allowed: key, object, paste)")

    def sels(entry: Any, what: str) -> list[Selection]:
        if entry is None:
            return []
        if not isinstance(entry, list) or not all(isinstance(e, list) and len(e) == 2 for e in entry):
            raise InvalidEdit(f"paper-format '{what}' must be a list of [imgnum, data-url] pairs")
        return [selection_from_dict({"seed": e[0], "mask": e[1]}, f"{what}[{i}]") for i, e in enumerate(entry)]

    paste = sels(request["paste"], "paste")
    obj = sels(request.get("object"), "object")
    if len(paste) != 1 or len(obj) > 1:
        raise InvalidEdit("paper-format request needs exactly one 'paste' and at most one 'object' entry")
    upd = update or UpdateConfig()
    return EditSpec(model=model, fingerprint=fingerprint, layer=layer, paste=paste[0], copy=obj[0] if obj else None,
                    context=tuple(sels(request.get("key"), "key")), update=upd if obj else replace(upd, erase=True))


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


def is_paper_request(data: Any) -> bool:
    """Whether parsed JSON is in the original paper's request format (no format marker, a 'paste' entry)."""
    return isinstance(data, dict) and "format" not in data and "paste" in data


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


@dataclass
class StackEntry:
    """One applied edit in an EditStack."""

    id: int
    name: str
    delta: LowRankDelta
    spec: EditSpec | None = None


class EditStack:
    """The model's edited weights are always W0 + the sum of the active deltas, in order.

    Each change recomputes the weight from the saved W0, so undo, redo and removal are exact to
    the bit: removing the first of two edits leaves exactly the weight of applying the second alone.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._base: dict[str, torch.Tensor] = {}
        self.entries: list[StackEntry] = []
        self.undone: list[StackEntry] = []
        self._next_id = 1

    def _param(self, path: str) -> nn.Parameter:
        params = dict(self.model.named_parameters())
        if path not in params:
            raise IncompatibleEdit(f"the model has no parameter {path!r}")
        return params[path]

    def base_weight(self, path: str) -> torch.Tensor:
        """W0 of a parameter (its value before any edit of this stack)."""
        return self._base.get(path, self._param(path).detach())

    def base_weights(self) -> dict[str, torch.Tensor]:
        """W0 of every parameter this stack has touched."""
        return dict(self._base)

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """Inside the block the model has its original weights W0; the edits come back afterwards."""
        saved = list(self.entries)
        self.entries.clear()
        try:
            for path in self._base:
                self._sync(path)
            yield
        finally:
            self.entries.extend(saved)
            for path in self._base:
                self._sync(path)

    def push(self, delta: LowRankDelta, name: str = "", spec: EditSpec | None = None) -> StackEntry:
        """Apply an edit on top of the stack; clears the redo list."""
        param = self._param(delta.param_path)
        if delta.dense().shape != param.shape:
            raise IncompatibleEdit(f"edit delta has shape {tuple(delta.dense().shape)} but {delta.param_path} is {tuple(param.shape)}")
        if not delta.is_finite():
            raise InvalidEdit("refusing to apply an edit with NaN or infinite values")
        self._base.setdefault(delta.param_path, param.detach().clone())
        entry = StackEntry(self._next_id, name or f"edit {self._next_id}", delta, spec)
        self._next_id += 1
        self.entries.append(entry)
        self.undone.clear()
        self._sync(delta.param_path)
        return entry

    def undo(self) -> StackEntry | None:
        """Remove the last edit (it can be redone)."""
        if not self.entries:
            return None
        entry = self.entries.pop()
        self.undone.append(entry)
        self._sync(entry.delta.param_path)
        return entry

    def redo(self) -> StackEntry | None:
        """Re-apply the last undone edit."""
        if not self.undone:
            return None
        entry = self.undone.pop()
        self.entries.append(entry)
        self._sync(entry.delta.param_path)
        return entry

    def remove(self, entry_id: int) -> StackEntry:
        """Remove any one edit, leaving the others exactly as if it had never been applied."""
        for i, entry in enumerate(self.entries):
            if entry.id == entry_id:
                del self.entries[i]
                self._sync(entry.delta.param_path)
                return entry
        raise KeyError(f"no active edit with id {entry_id}")

    def revert_all(self) -> None:
        """Remove every edit; the weights become W0 again, bit for bit."""
        self.undone.extend(reversed(self.entries))
        self.entries.clear()
        for path in self._base:
            self._sync(path)

    def _sync(self, path: str) -> None:
        weight = self._base[path].clone()
        for entry in self.entries:
            if entry.delta.param_path == path:
                weight += entry.delta.dense().to(weight.device, weight.dtype)
        with torch.no_grad():
            self._param(path).copy_(weight)
