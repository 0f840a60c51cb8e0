"""The multi-edit file: a batch of edits solved together (a joint solve), versioned and self-describing.

`NAME.json` holds the members (each a complete edit, `EditSpec.to_dict`) and one group per layer (its member
indices, parameter, key axis and rank); `NAME.safetensors` beside it, when the batch was solved, holds each
group's factor and directions and each member's own directions, with metadata naming the format, version,
model fingerprint and a digest of the JSON's members, so a factors file never pairs with another batch. Both
files are written atomically (factors first). Data only: no forward-pass code.

    {"format": "model-rewrite-multi-edit", "version": 1, "name": ..., "model": ..., "fingerprint": ...,
     "members": [edit, ...], "groups": [{"layer": "b32", "param_path": "b32.conv.weight", "key_axis": 0,
     "rank": 3, "members": [0, 2]}, ...], "note": ...}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cache import atomic_write_bytes, load_tensors, save_tensors
from .edits import EditSpec, factors_path, read_edit_json
from .errors import IncompatibleEdit, InvalidEdit
from .stack import Member, joint_name
from .update import LowRankDelta

MULTI_FORMAT = "model-rewrite-multi-edit"
MULTI_VERSION = 1
_KEYS = {"format", "version", "name", "model", "fingerprint", "members", "groups", "note"}
_GROUP_KEYS = {"layer", "param_path", "key_axis", "rank", "members"}


@dataclass(frozen=True)
class SolvedGroup:
    """One layer's joint solve as read from a file: its delta and members (in file order)."""

    layer: str
    delta: LowRankDelta
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        return joint_name(self.members)


def is_multi_edit(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == MULTI_FORMAT


def _digest(members: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(members, sort_keys=True).encode()).hexdigest()[:32]


def save_multi_edit(path: str | Path, edits: Sequence[EditSpec], solved: Sequence[Any] | None = None,
                    name: str = "", note: str = "") -> Path:
    """Write a batch: the edits (members) and, when given, their joint solves (`joint.JointResult` or
    `SolvedGroup`, one per layer, whose members are `edits`' specs). Atomic; returns the JSON path."""
    path = Path(path)
    if path.suffix != ".json":
        raise InvalidEdit(f"multi-edit files end in .json, got {path.name}")
    edits = list(edits)
    if not edits:
        raise InvalidEdit("a multi-edit file holds at least one edit")
    members = [e.to_dict() for e in edits]
    index = {json.dumps(m, sort_keys=True): i for i, m in enumerate(members)}
    groups, tensors = [], {}
    for g, result in enumerate(solved or ()):
        ids = [index.get(json.dumps(m.spec.to_dict(), sort_keys=True)) for m in result.members]
        if None in ids:
            raise InvalidEdit(f"the solve for layer {result.layer} has a member that is not among the edits")
        if not result.delta.is_finite():
            raise InvalidEdit("refusing to save a joint solve whose factors hold NaN or infinite values")
        groups.append({"layer": result.layer, "param_path": result.delta.param_path, "key_axis": result.delta.key_axis,
                       "rank": result.delta.rank, "members": ids})
        tensors[f"group{g}.factor"], tensors[f"group{g}.dirs"] = result.delta.factor, result.delta.dirs
        for i, m in zip(ids, result.members):
            tensors[f"member{i}.dirs"] = m.dirs
    data = {"format": MULTI_FORMAT, "version": MULTI_VERSION, "name": name, "model": edits[0].model,
            "fingerprint": edits[0].fingerprint, "members": members, "groups": groups, "note": note}
    _check_members(data["fingerprint"], [(i, e) for i, e in enumerate(edits)])
    if groups:
        save_tensors(factors_path(path), tensors, {"format": MULTI_FORMAT, "version": MULTI_VERSION,
                                                   "fingerprint": data["fingerprint"], "digest": _digest(members)})
    elif factors_path(path).exists():
        factors_path(path).unlink()  # an unsolved batch: no stale factors beside it
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    return path


def _check_members(fingerprint: str, edits: list[tuple[int, EditSpec]]) -> None:
    seen: dict[str, int] = {}
    for i, e in edits:
        if e.fingerprint != fingerprint:
            raise IncompatibleEdit(f"member {i} ({e.name or 'unnamed'}) was made for model {e.model!r} (fingerprint "
                                   f"{e.fingerprint}), but the batch is for fingerprint {fingerprint}")
        d = e.to_dict()
        d.pop("name"), d.pop("note")
        key = json.dumps(d, sort_keys=True)
        if key in seen:
            raise InvalidEdit(f"members {seen[key]} and {i} are the same rule; a batch holds each rule once")
        seen[key] = i


def multi_edit_from_dict(data: Any, *, max_side: int | None = None) -> tuple[list[EditSpec], list[dict[str, Any]]]:
    """The members and groups of a multi-edit JSON, validated; InvalidEdit/IncompatibleEdit name the problem.
    Masks over `max_side` pixels on a side are refused from their headers (EditSpec.from_dict)."""
    if not is_multi_edit(data):
        raise InvalidEdit(f"not a model-rewrite multi-edit file (format is {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != MULTI_VERSION:
        raise IncompatibleEdit(f"multi-edit format version {data.get('version')!r} is not supported (this version reads {MULTI_VERSION})")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InvalidEdit(f"unknown key(s) {unknown} in the multi-edit file; allowed keys are {sorted(_KEYS)}")
    if not isinstance(data.get("fingerprint"), str) or not isinstance(data.get("members"), list) or not data["members"]:
        raise InvalidEdit("a multi-edit file needs a 'fingerprint' and a non-empty 'members' list")
    edits = []
    for i, m in enumerate(data["members"]):
        try:
            edits.append(EditSpec.from_dict(m, max_side=max_side))
        except (InvalidEdit, IncompatibleEdit) as exc:
            raise type(exc)(f"member {i}: {exc}") from None
    _check_members(data["fingerprint"], list(enumerate(edits)))
    groups = data.get("groups") or []
    if not isinstance(groups, list):
        raise InvalidEdit("'groups' must be a list")
    placed: dict[int, int] = {}
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or set(group) != _GROUP_KEYS:
            raise InvalidEdit(f"group {g} must hold exactly {sorted(_GROUP_KEYS)}")
        ids = group["members"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and 0 <= i < len(edits) for i in ids):
            raise InvalidEdit(f"group {g} must list member indices from 0 to {len(edits) - 1}")
        for i in ids:
            if i in placed:
                raise InvalidEdit(f"member {i} is in groups {placed[i]} and {g}; each member is solved once")
            placed[i] = g
            if edits[i].layer != group["layer"]:
                raise IncompatibleEdit(f"member {i} ({edits[i].name or 'unnamed'}) is at layer {edits[i].layer} but its "
                                       f"group {g} was solved at layer {group['layer']}")
    if groups and len(placed) != len(edits):
        missing = sorted(set(range(len(edits))) - set(placed))
        raise InvalidEdit(f"member(s) {missing} belong to no group of the solved batch")
    return edits, groups


def load_multi_edit(path: str | Path, *, max_side: int | None = None) -> tuple[list[EditSpec], list[SolvedGroup] | None]:
    """A batch's edits and, if its factors file is present and matches, its solved groups (else None)."""
    path = Path(path)
    data = read_edit_json(path)
    edits, groups = multi_edit_from_dict(data, max_side=max_side)
    fpath = factors_path(path)
    if not groups or not fpath.exists():
        return edits, None
    tensors, meta = load_tensors(fpath)
    if meta.get("format") != MULTI_FORMAT or meta.get("digest") != _digest(data["members"]) \
            or meta.get("fingerprint") != data["fingerprint"]:
        raise IncompatibleEdit(f"{fpath.name} holds the factors of another batch than {path.name}; delete it to re-solve")
    solved = []
    for g, group in enumerate(groups):
        try:
            factor, dirs = tensors[f"group{g}.factor"], tensors[f"group{g}.dirs"]
            own = [tensors[f"member{i}.dirs"] for i in group["members"]]
        except KeyError as exc:
            raise InvalidEdit(f"{fpath.name} lacks tensor {exc.args[0]}; delete it to re-solve") from None
        axis = group["key_axis"]
        if dirs.dim() != 2 or dirs.shape[0] != group["rank"] or factor.dim() <= axis or factor.shape[axis] != dirs.shape[0]:
            raise InvalidEdit(f"group {g} of {fpath.name}: factor {tuple(factor.shape)} and directions {tuple(dirs.shape)} "
                              f"do not make a rank-{group['rank']} change")
        if any(d.dim() != 2 or d.shape[1] != dirs.shape[1] for d in own):
            raise IncompatibleEdit(f"group {g} of {fpath.name}: a member's directions do not fit the layer's key size")
        delta = LowRankDelta(group["param_path"], axis, factor, dirs)
        if not delta.is_finite():
            raise InvalidEdit(f"{fpath} holds NaN or infinite values; delete it to re-solve")
        solved.append(SolvedGroup(group["layer"], delta, tuple(Member(edits[i], d) for i, d in zip(group["members"], own))))
    return edits, solved


def group_from_entry(entry: Any) -> SolvedGroup:
    """A stack entry of a joint solve as a SolvedGroup (for saving what is applied)."""
    if not entry.members:
        raise InvalidEdit(f"edit {entry.name!r} is not a joint solve")
    return SolvedGroup(entry.members[0].spec.layer, entry.delta, entry.members)

