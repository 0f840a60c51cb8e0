"""Helpers shared by the checkpoint formats: safe torch reading, file hashes, strict state-dict loading."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError


def read_torch_checkpoint(path: str | Path) -> Any:
    """torch.load with weights_only=True: nothing in the file is executed (argparse.Namespace is allowed,
    for the `args` of rosinality's train.py checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for bad or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot read {path} as a torch checkpoint with weights_only=True ({first}); the file may be "
            "truncated, not a checkpoint, or hold objects other than tensors (only plain state dicts are read)"
        ) from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: object) -> None:
    """Load `sd` into `model` only if it fits exactly: the same keys, the same shapes, finite floats.

    The error names the first missing, unexpected and mis-shaped keys, so a file of another
    architecture (or another size) is refused with the reason rather than half-loaded."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or bad:
        raise ModelLoadError(
            f"{source} does not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:5]]}"
        )
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f"{source}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(sd)
