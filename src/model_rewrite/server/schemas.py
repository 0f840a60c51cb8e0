"""Pydantic request and response models of the web API; edit bodies mirror EditSpec's JSON form."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import KeyConfig, StatsConfig, UpdateConfig, field_choices, field_range
from ..latents import MAX_SEED


MAX_MASK_CHARS = 1_000_000  # a PNG data URL of one mask; a 64x64 mask is a few kB
MAX_CONTEXT = 64  # context selections in one request
MAX_PAGE = 64  # images in one gallery page or overlay request
MAX_SEARCH = 2000  # candidate images of one context search
MAX_GALLERY = 4096  # images one gallery seed specification may name (256 pages of 16)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _mirror(cls: type, name: str) -> type[BaseModel]:
    """A pydantic model with the fields, types, defaults, ranges and choices of a config dataclass (one source
    of truth), so the OpenAPI schema documents them. Values are checked again by the dataclass itself."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        rng, choices = field_range(cls, f.name), field_choices(cls, f.name)
        kind: Any = Literal[choices] if choices else hints[f.name]  # type: ignore[valid-type]
        limits: dict[str, Any] = {}
        if rng is not None:
            limits = {"gt" if rng.lo_open else "ge": rng.lo, "lt" if rng.hi_open else "le": rng.hi}
            if hints[f.name] is float:
                kind = Annotated[float, Field(allow_inf_nan=False)]
        fields[f.name] = (kind, Field(default=f.default, **limits))
    return create_model(name, __config__=ConfigDict(extra="forbid", strict=True), **fields)


KeyConfigIn = _mirror(KeyConfig, "KeyConfigIn")
UpdateConfigIn = _mirror(UpdateConfig, "UpdateConfigIn")
StatsConfigIn = _mirror(StatsConfig, "StatsConfigIn")


class SelectionIn(_Strict):
    """A painted region: the image's seed and its mask as a PNG data URL at image resolution."""

    seed: int = Field(ge=0, le=MAX_SEED)
    mask: str = Field(max_length=MAX_MASK_CHARS)


class EditIn(_Strict):
    """An edit as the page builds it: EditSpec's JSON form without model and fingerprint."""

    layer: str
    paste: SelectionIn
    copy_: SelectionIn | None = Field(default=None, alias="copy")  # "copy" would shadow BaseModel.copy
    context: list[SelectionIn] = Field(default_factory=list, max_length=MAX_CONTEXT)
    keys: KeyConfigIn = Field(default_factory=KeyConfigIn)  # type: ignore[valid-type]
    update: UpdateConfigIn = Field(default_factory=UpdateConfigIn)  # type: ignore[valid-type]
    stats: StatsConfigIn = Field(default_factory=StatsConfigIn)  # type: ignore[valid-type]
    name: str = Field(default="", max_length=200)
    note: str = Field(default="", max_length=2000)


class ContextIn(_Strict):
    """The context of a search or overlay request, with the settings that define its directions
    (the same `keys` and `stats` as an edit's)."""

    layer: str
    context: list[SelectionIn] = Field(min_length=1, max_length=MAX_CONTEXT)
    keys: KeyConfigIn = Field(default_factory=KeyConfigIn)  # type: ignore[valid-type]
    stats: StatsConfigIn = Field(default_factory=StatsConfigIn)  # type: ignore[valid-type]


class SearchIn(ContextIn):
    seeds: str = Field(default="0-199", max_length=2000)  # candidates, e.g. "0-499" or "3,7,12"
    top_k: int = Field(default=12, ge=1, le=MAX_PAGE)
    quantile: float = Field(default=0.98, gt=0.0, lt=1.0)  # of the reference heat: where a match fires


class MatchesIn(ContextIn):
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=MAX_PAGE)
    quantile: float = Field(default=0.98, gt=0.0, lt=1.0)
    which: Literal["edited", "original"] = "edited"


class LiveIn(_Strict):
    """A draft edit and the images to show it on: solved in closed form and applied only while they render."""

    edit: EditIn
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(min_length=1, max_length=MAX_PAGE)


class PreviewIn(_Strict):
    copy_: SelectionIn = Field(alias="copy")
    paste: SelectionIn | None = None
    layer: str | None = None  # with a paste: also render the goal as the model will draw it at this layer


class SaveIn(_Strict):
    """Save the whole active stack (`stack`), an applied edit (`entry_id`, default the last one) or a draft
    (`edit`) under `name`."""

    name: str = Field(max_length=200)
    overwrite: bool = False
    stack: bool = False
    entry_id: int | None = None
    edit: EditIn | None = None


class ImportIn(_Strict):
    """Store an edit file's JSON (read in the browser) under `name`."""

    name: str = Field(max_length=200)
    edit: dict[str, Any]
    overwrite: bool = False


class LoadIn(_Strict):
    apply: bool = True  # push the edit (solving it if the file has no factors)
    again: bool = False  # push it even if the same edit is applied already (it would count twice)


# --- responses ------------------------------------------------------------------------------


class LayerOut(BaseModel):
    name: str
    kind: str
    key_size: int
    value_shape: list[int]
    key_resolution: int
    resolution: int


class InfoOut(BaseModel):
    model: str
    fingerprint: str
    kind: str
    resolution: int
    layers: list[LayerOut]
    default_layer: str
    keys: dict[str, Any]  # KeyConfig defaults
    update: dict[str, Any]  # UpdateConfig defaults
    stats: dict[str, Any]  # StatsConfig defaults
    fire_quantile: float
    max_page: int
    # the bounds of the page's inputs: {"keys"|"update"|"stats": {field: {"ge"|"gt"|"le": value}}} from the config
    # dataclasses (`config.bounded`), and the seed limits of the gallery and search
    bounds: dict[str, Any]
    max_gallery: int
    max_search: int
    max_seed: int
    name_pattern: str  # what a whole saved edit name must match (a JavaScript-compatible regular expression, unanchored)
    match_reference: list[int]  # the fixed images whose heat sets the match threshold
    edits_dir: str
    session: str


class GalleryImage(BaseModel):
    seed: int
    edited: str  # URL of the PNG from the current weights
    original: str  # URL of the PNG from the unedited weights


class GalleryOut(BaseModel):
    state: str
    seeds: list[int]
    total: int
    page: int
    pages: int
    images: list[GalleryImage]


class JobOut(BaseModel):
    id: int
    kind: str
    name: str
    state: Literal["running", "done", "cancelled", "failed"]
    phase: str
    step: int
    steps: int
    losses: list[float]  # from index `since`
    since: int
    error: str
    note: str = ""  # warnings about the finished job, one a line: no Adam step beat the closed form; overlaps with earlier edits
    entry_id: int | None
    seconds: float
    # once done: `quality.quality_report` on held-out images (QualityReport.to_dict(): name, layer, heldout_seeds,
    # paste_fidelity, transfer, fires_on, collateral, verdicts, lines, inside_change, outside_change, ratio, ...);
    # None before or on failure
    report: dict[str, Any] | None = None
    # a "joint" job (or the load of unsolved rules saved together), once done: one quality report per rule
    # inside the joint edit, in its order (`report` stays None)
    reports: list[dict[str, Any]] | None = None
    # a "suggest" job, once done: one row per (layer, rank) tried, best first (suggest.Candidate.to_dict())
    suggestions: list[dict[str, Any]] | None = None


class JointIn(BaseModel):
    layer: str = Field(min_length=1, max_length=200)  # every applied edit at this layer is solved again, together


class TakeOutIn(BaseModel):
    member: int = Field(ge=0, le=100_000)  # the rule's index among the joint edit's `members`


class JobStatus(BaseModel):
    job: JobOut | None


class EntryOut(BaseModel):
    id: int
    name: str
    layer: str
    rank: int
    param_path: str
    edit: dict[str, Any] | None  # EditSpec JSON form (masks as data URLs); None for edits solved together
    members: list[str] = []  # edits solved together: their rules' names, in order (empty for one edit)
    member_edits: list[dict[str, Any]] = []  # and their EditSpec JSON forms, in the same order


class HistoryOut(BaseModel):
    state: str
    entries: list[EntryOut]
    undone: list[EntryOut]  # redo list, next redo first


class TakeOutOut(BaseModel):
    job: JobOut | None  # the others solved again together; None: it was the edit's only rule (removed at once)
    history: HistoryOut


class SavedEditOut(BaseModel):
    name: str
    # one edit, a whole stack (format "model-rewrite-edit-stack") or rules solved together ("model-rewrite-multi-edit")
    kind: Literal["edit", "stack", "joint"] = "edit"
    count: int = 1  # edits in the file
    layer: str  # the layer (a stack: its layers, comma-separated)
    model: str
    has_factors: bool
    readable: bool = True  # False: the file could not be read as an edit (`error` says why)
    compatible: bool
    error: str
    modified: float


class SavedEditsOut(BaseModel):
    edits_dir: str
    edits: list[SavedEditOut]


class SavedEditDetail(BaseModel):
    name: str
    has_factors: bool
    edit: dict[str, Any]  # of a stack: the last edit
    count: int = 1
    edits: list[dict[str, Any]] = Field(default_factory=list)  # every edit, in order


class LoadOut(BaseModel):
    name: str
    edit: dict[str, Any]  # the edit (of a stack: the last one), for the page to show its regions
    entry: EntryOut | None  # pushed at once (the file had factors; of a stack: the last one)
    job: JobOut | None  # started (the edit is being solved; a stack's edits in order)
    count: int = 1  # edits in the file
    entries: list[EntryOut] = Field(default_factory=list)  # every edit pushed at once
    note: str = ""  # warnings about the edits pushed at once, one a line (overlaps with edits before them)


class PreviewOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    copy_: str = Field(alias="copy")  # PNG data URL of the copied pixels (RGBA, cropped to the mask's box)
    copy_box: list[int]  # (y0, y1, x0, x1) in image pixels
    composite: str | None  # PNG data URL of the paste image with the copy composited (what was painted)
    paste_box: list[int] | None
    rendered: str | None = None  # PNG data URL of the goal drawn by the rest of the generator (with `layer`)


class Match(BaseModel):
    seed: int
    score: float  # the image's highest heat along the direction
    url: str
    overlay: str  # PNG data URL: where it fires (above the fixed threshold), outlined
    mask: str  # PNG data URL of the firing region at image resolution (to add it to the context)
    fraction: float  # share of the image's locations that fire


class SearchOut(BaseModel):
    matches: list[Match]
    searched: int
    threshold: float  # heat above which a location fires: `quantile` of the heat on the fixed reference images
    quantile: float
    warning: str = ""  # e.g. the direction fires along one edge of the searched images (quality.edge_warning)


class Overlay(BaseModel):
    seed: int
    image: str  # PNG data URL: the image dimmed outside the firing region, outlined in the match colour (amber)
    fraction: float  # share of the image's locations that fire


class MatchesOut(BaseModel):
    threshold: float  # the `quantile` of the heat on the fixed reference images (InfoOut.match_reference)
    quantile: float
    overlays: list[Overlay]


class SpectrumOut(BaseModel):
    """How many directions a context spans: the singular values of its whitened keys, largest first."""

    values: list[float]  # the first 16, relative to the largest (the first is 1)
    keys: int  # key locations under the context masks
    rank: int  # the rank asked for
    directions: int  # how many of all the values are at least SPAN_CUTOFF (0.1)


class LiveImage(BaseModel):
    seed: int
    image: str  # PNG data URL


class LiveOut(BaseModel):
    images: list[LiveImage]
    seconds: float  # closed-form solve and rendering, on the server
    layer: str
    note: str = ""  # what Execute would warn about: overlaps with the applied edits, one a line
