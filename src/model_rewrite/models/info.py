"""What a loaded generator is (ModelInfo, with the file it came from: ModelOrigin), its weight fingerprint,
and the one function that builds both."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelOrigin:
    """The checkpoint file a generator was read from, so that an edited copy can be written back in the
    same format (`model-rewrite export --format same`)."""

    format: str  # the file's format: "rosinality", "nvidia", "progan", "dcgan" or "safetensors" (our export)
    path: str  # the resolved path of the file
    options: str = ""  # the sampling options of the model name (`truncation_psi=0.5&...`, after the `?`)


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded generator is: its id, architecture, fingerprint and source."""

    model_id: str  # name or path the user gave ("faces", "tiny", "/path/model.safetensors")
    kind: str  # architecture family ("dcgan", ...)
    fingerprint: str  # sha256 prefix of the weights (see fingerprint_model)
    resolution: int
    latent_shape: tuple[int, ...]
    source: str  # where the weights came from
    origin: ModelOrigin | None = None  # the file it was read from; None for a model built from code


def fingerprint_model(model: nn.Module) -> str:
    """16 hex digits of sha256 over every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_kind(model: nn.Module) -> str:
    """The architecture family: `model.architecture()["kind"]` where the model describes itself, else its class name."""
    architecture = getattr(model, "architecture", None)
    return str(architecture()["kind"]) if callable(architecture) else type(model).__name__


def model_info(model: nn.Module, model_id: str, source: str, origin: ModelOrigin | None = None) -> ModelInfo:
    """The ModelInfo of `model` as it is now (fingerprint of its current weights); the one place one is built."""
    return ModelInfo(model_id=model_id, kind=model_kind(model), fingerprint=fingerprint_model(model),
                     resolution=int(getattr(model, "resolution", 0)),
                     latent_shape=tuple(getattr(model, "latent_shape", ())), source=source, origin=origin)
