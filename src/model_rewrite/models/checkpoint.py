"""Helpers shared by the checkpoint formats: safe torch reading and atomic writing, file hashes, strict
state-dict loading, and the tensor bookkeeping of writing an edited model back into its own file format."""

from __future__ import annotations

import argparse
import copy
import hashlib
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cache import atomic_write
from ..errors import ModelLoadError


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def check_file(path: Path, what: str) -> None:
    """ModelLoadError unless `path` is a non-empty regular file (`what` names the format expected)."""
    if not path.is_file():
        raise ModelLoadError(f"no checkpoint file at {path} (expected {what}); check the path")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes), so it cannot be {what}; was a download or copy interrupted?")


def read_torch_checkpoint(path: str | Path) -> Any:
    """torch.load with weights_only=True: nothing in the file is executed (argparse.Namespace is allowed,
    for the `args` of rosinality's train.py checkpoints). A refused file's message names the Python global
    it references; torch's warnings are not printed (the error says what matters)."""
    path = Path(path)
    check_file(path, "a torch checkpoint")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for bad or unsafe files
        text = _ANSI.sub("", str(exc))
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise ModelLoadError(
                f"refused to load {path}: it references the Python global {refused.group(1)}, which a checkpoint of "
                "plain tensors does not need; nothing in it was run (only state dicts of tensors are read)") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise ModelLoadError(
            f"cannot read {path} as a torch checkpoint ({type(exc).__name__}: {first}); the file may be truncated, "
            "not a checkpoint, or hold objects other than tensors (only plain state dicts are read)") from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_strict(model: nn.Module, sd: dict[str, Any], source: object, names: Mapping[str, str] | None = None) -> None:
    """Load `sd` into `model` only if it fits exactly: the same keys, tensors of the same shapes, finite floats.

    The error names the file (`source`) and its first missing, unexpected and mis-shaped keys in the file's own
    naming (`names`: our key -> the file's, for formats whose keys we rename), so a file of another architecture
    (or another size) is refused with the reason rather than half-loaded."""
    own = model.state_dict()
    theirs = lambda k: names.get(k, k) if names else k  # noqa: E731
    missing = sorted(theirs(k) for k in set(own) - set(sd))
    unexpected = sorted(theirs(k) for k in set(sd) - set(own))
    not_tensors = sorted(theirs(k) for k in set(own) & set(sd) if not isinstance(sd[k], torch.Tensor))
    bad = sorted(k for k in set(own) & set(sd) if isinstance(sd[k], torch.Tensor) and own[k].shape != sd[k].shape)
    if missing or unexpected or bad or not_tensors:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"not tensors {not_tensors[:5]}" if not_tensors else "",
                 "wrong shapes " + ", ".join(f"{theirs(k)} is {list(sd[k].shape)}, expected {list(own[k].shape)}"
                                             for k in bad[:5]) if bad else ""]
        raise ModelLoadError(f"{source} does not match the architecture: {'; '.join(p for p in parts if p)}")
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f"{source}: tensor {theirs(k)} holds NaN or infinite values")
    model.load_state_dict(sd)


def fit_shape(value: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """`value` reshaped to `shape` when the two differ only by dimensions of size 1 (rosinality's leading 1
    of conv weights, a noise strength stored as `[1]` or `[]`...); otherwise `value` unchanged, so that
    load_strict reports the mismatch. Used both ways: file -> our model, and our model -> file."""
    if tuple(value.shape) != tuple(shape) and [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(tuple(shape))
    return value


def changed_tensors(file_sd: Mapping[str, Any], names: Mapping[str, str | None],
                    ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a file's state dict that our (edited) model holds with other values: by file key, our
    tensor in the file's shape and dtype. `names` maps a file key to our key (None: we do not store it).
    An unedited model gives {}, so writing it back reproduces the file's tensors bit for bit."""
    out: dict[str, torch.Tensor] = {}
    for key, ours_key in names.items():
        old = file_sd[key]
        if ours_key is None or not isinstance(old, torch.Tensor):
            continue
        new = fit_shape(ours[ours_key].detach().cpu(), old.shape).to(old.dtype)
        if new.shape != old.shape:
            raise ModelLoadError(f"cannot write {ours_key} {tuple(new.shape)} as {key} {tuple(old.shape)}: the shapes differ")
        if not torch.equal(new, old):
            out[key] = new.clone(memory_format=torch.contiguous_format)  # its own storage, not a view of ours
    return out


def with_tensors(sd: Mapping[str, Any], changes: Mapping[str, Any]) -> Any:
    """A shallow copy of `sd` (same type, same key order, an OrderedDict's `_metadata` kept) with `changes`."""
    new = copy.copy(sd)
    for key, value in changes.items():
        new[key] = value
    return new


def moved_by(target: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`target` moved by the change `new - old` of another copy of the same weights (for `g` beside `g_ema`)."""
    return (target.double() + (new.double() - old.double())).to(target.dtype)


def write_torch_checkpoint(obj: Any, path: Path, like: Path) -> None:
    """torch.save `obj` atomically at `path`, in the serialization of the file `like` (the zip archive of
    torch >= 1.6, or the legacy format)."""
    legacy = not zipfile.is_zipfile(like)
    atomic_write(path, lambda f: torch.save(obj, f, _use_new_zipfile_serialization=not legacy))
