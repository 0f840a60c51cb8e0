"""The original paper's request files (written by the authors' notebook widget) read as our EditSpec,
and `read_edit_or_request`, which reads either kind of file for a loaded model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import UpdateConfig
from .edits import EditSpec, Selection, check_made_for, load_edit, read_edit_json, selection_from_dict
from .errors import InvalidEdit
from .update import LowRankDelta


def is_paper_request(data: Any) -> bool:
    """Whether parsed JSON is in the original paper's request format (no format marker, a 'paste' entry)."""
    return isinstance(data, dict) and "format" not in data and "paste" in data


def edit_from_paper_request(request: Any, *, model: str, fingerprint: str, layer: str, update: UpdateConfig | None = None,
                            max_side: int | None = None) -> EditSpec:
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
        return [selection_from_dict({"seed": e[0], "mask": e[1]}, f"{what}[{i}]", max_side) for i, e in enumerate(entry)]

    paste = sels(request["paste"], "paste")
    obj = sels(request.get("object"), "object")
    if len(paste) != 1 or len(obj) > 1:
        raise InvalidEdit("paper-format request needs exactly one 'paste' and at most one 'object' entry")
    upd = update or UpdateConfig()
    return EditSpec(model=model, fingerprint=fingerprint, layer=layer, paste=paste[0], copy=obj[0] if obj else None,
                    context=tuple(sels(request.get("key"), "key")), update=upd if obj else replace(upd, erase=True))


def read_edit_or_request(path: str | Path, *, model: str, fingerprint: str, layer: str | None = None,
                         max_side: int | None = None) -> tuple[EditSpec, LowRankDelta | None]:
    """An EditSpec (and its saved factors, if any) from our edit format or the paper's request format.

    The paper's files name no model or layer: they are read for the loaded model (`model`,
    `fingerprint`) at `layer`, which is then required. For our files `layer`, when given, must agree. Masks
    over `max_side` (the model's image side) are refused before they are decoded.
    """
    path = Path(path)
    data = read_edit_json(path)
    if is_paper_request(data):
        if not layer:
            raise InvalidEdit(f"{path} is in the paper's request format, which names no layer: pass --layer (and --model)")
        return edit_from_paper_request(data, model=model, fingerprint=fingerprint, layer=layer, max_side=max_side), None
    if isinstance(data, dict) and "fingerprint" in data:  # the wrong model is named before any mask is decoded
        check_made_for(data.get("name"), data.get("model"), data.get("fingerprint"), model, fingerprint)
    spec, delta = load_edit(path, max_side=max_side)
    if layer and layer != spec.layer:
        raise InvalidEdit(f"--layer {layer} differs from the edit's layer {spec.layer}; drop --layer")
    return spec, delta
