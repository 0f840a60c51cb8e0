"""The original authors' request files (written by their notebook widget, `rewrite/rewriteapp.py`) read as our
EditSpec, and `read_edit_or_request`, which reads either kind of file for a loaded model.

Their format (a JSON object, every field optional; /work/shared/paper-requests/README.md):

    key      list of [imgnum, mask]   the context selections           -> EditSpec.context
    object   one [imgnum, mask]       the copy selection               -> EditSpec.copy
    paste    one [imgnum, mask]       the paste selection              -> EditSpec.paste
    query    one [imgnum, mask]       the "Match Sel" ranking region   -> EditSpec.query

Masks are PNG data URLs at the authors' image size (256 or 1024 px); they are resized (area average) to the
model's. A file with a paste is an edit (without `object`: the erase variant, as their widget runs it); one
without is a search request (it ranks images by its query, else its context). The files name no model or
layer, so the caller does; `imgnum` is an image number in the caller's latent scheme (`latents="paper"`
gives the authors' images).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import UpdateConfig
from .edits import EditSpec, Selection, check_made_for, load_edit, read_edit_json
from .errors import InvalidEdit
from .masks import fit_mask, mask_from_png_data_url
from .update import LowRankDelta

REQUEST_FIELDS = ("key", "object", "paste", "query")


def is_paper_request(data: Any) -> bool:
    """Whether parsed JSON is in the authors' request format: an object without our format marker whose
    fields are among key, object, paste and query (at least one)."""
    return isinstance(data, dict) and "format" not in data and bool(data) and set(data) <= set(REQUEST_FIELDS)


def is_reflection_file(data: Any) -> bool:
    """Whether parsed JSON is the authors' reflection experiment's file (`reflections/.../posneg.json`):
    image numbers mapped to {"value", "intervention", "revert"} records."""
    return (isinstance(data, dict) and bool(data) and all(str(k).isdigit() for k in data)
            and all(isinstance(v, dict) and "intervention" in v for v in data.values()))


def _selection(entry: Any, what: str, resolution: int | None) -> Selection:
    """One [imgnum, mask] pair as a Selection, its mask resized to `resolution` (if given)."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise InvalidEdit(f"request field {what} must be one [imgnum, mask] pair, got {str(entry)[:60]}")
    imgnum, url = entry
    if not isinstance(imgnum, int) or isinstance(imgnum, bool) or imgnum < 0:
        raise InvalidEdit(f"request field {what}: the image number must be a non-negative integer, got {imgnum!r}")
    mask = mask_from_png_data_url(url, what)
    return Selection(imgnum, fit_mask(mask, resolution, what) if resolution else mask)


def edit_from_paper_request(request: Any, *, model: str, fingerprint: str, layer: str, update: UpdateConfig | None = None,
                            resolution: int | None = None, latents: str = "seeds", name: str = "") -> EditSpec:
    """Convert one of the authors' requests (see the module docstring) into an EditSpec for a model.

    `model`, `fingerprint`, `layer` (our name: resolve aliases first) and `latents` are the loaded model's,
    since the files name none of them; `resolution`, when given, is the image size masks are resized to.
    Every selection is kept: key -> context, object -> copy, paste -> paste, query -> query.
    """
    if is_reflection_file(request):
        raise InvalidEdit(reflection_message("this file"))
    if not isinstance(request, dict) or "format" in request:
        raise InvalidEdit("a request in the authors' format is a JSON object with key, object, paste and/or query fields")
    unknown = sorted(set(request) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidEdit(f"unknown field(s) {unknown} in the authors' request format (allowed: {', '.join(REQUEST_FIELDS)})")
    keys = request.get("key") or []
    if not isinstance(keys, list):
        raise InvalidEdit("request field key must be a list of [imgnum, mask] pairs")
    one = {f: _selection(request[f], f, resolution) if request.get(f) is not None else None for f in ("object", "paste", "query")}
    context = tuple(_selection(e, f"key[{i}]", resolution) for i, e in enumerate(keys))
    if one["paste"] is None and not context and one["query"] is None:
        raise InvalidEdit("the request has no paste (needed to apply an edit) and no key or query (needed to search); "
                          "it holds nothing to apply or search")
    upd = update or UpdateConfig()
    if one["paste"] is not None and one["object"] is None:
        upd = replace(upd, erase=True)  # the authors' widget erases when a paste has no copied object
    return EditSpec(model=model, fingerprint=fingerprint, layer=layer, paste=one["paste"], copy=one["object"],
                    context=context, query=one["query"], update=upd, latents=latents, name=name)


def reflection_message(what: str) -> str:
    """The one-line error for the authors' reflection experiment's file."""
    return (f"{what} is not an edit request: it is the authors' reflection experiment's file (image numbers mapped to "
            "a value and 'intervention'/'revert' masks, read by their notebook reflection-rule-change.ipynb), "
            "which model-rewrite does not run")


def read_edit_or_request(path: str | Path, *, model: str, fingerprint: str, layer: str | None = None,
                         resolution: int | None = None, latents: str = "seeds") -> tuple[EditSpec, LowRankDelta | None]:
    """An EditSpec (and its saved factors, if any) from our edit format or the authors' request format.

    The authors' files name no model or layer: they are read for the loaded model (`model`,
    `fingerprint`, `resolution`, `latents`) at `layer` (our name), which is then required. For our files
    `layer`, when given, must agree.
    """
    path = Path(path)
    data = read_edit_json(path)
    if is_reflection_file(data):
        raise InvalidEdit(reflection_message(str(path)))
    if is_paper_request(data):
        if not layer:
            raise InvalidEdit(f"{path} is in the authors' request format, which names no layer: pass --layer (and --model)")
        try:
            return edit_from_paper_request(data, model=model, fingerprint=fingerprint, layer=layer, resolution=resolution,
                                           latents=latents, name=path.stem), None
        except InvalidEdit as exc:
            raise InvalidEdit(f"{path}: {exc}") from None
    if isinstance(data, dict) and "fingerprint" in data:  # the wrong model is named before any mask is decoded
        check_made_for(data.get("name"), data.get("model"), data.get("fingerprint"), model, fingerprint)
    spec, delta = load_edit(path, max_side=resolution)
    if layer and layer != spec.layer:
        raise InvalidEdit(f"--layer {layer} differs from the edit's layer {spec.layer}; drop --layer")
    return spec, delta
