"""Export an edited generator as safetensors + JSON metadata, and check that it reloads identically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .cache import save_tensors
from .errors import ModelLoadError
from .models import ModelInfo, fingerprint_model

EXPORT_VERSION = 1


def export_model(model: nn.Module, info: ModelInfo, path: str | Path, edits: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the model's current (edited) weights to `path` (.safetensors) with metadata naming the base
    model, its fingerprint, the architecture and the applied edits. Atomic."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"export to a .safetensors file, got {path.name}")
    arch = getattr(model, "architecture", None)
    if not callable(arch):
        raise ModelLoadError(f"{type(model).__name__} cannot describe its architecture; export needs model.architecture()")
    meta = {"version": EXPORT_VERSION, "architecture": arch(), "base_model": info.model_id,
            "base_fingerprint": info.fingerprint, "fingerprint": fingerprint_model(model), "edits": list(edits)}
    save_tensors(path, dict(model.state_dict()), meta)
    return path


def check_export(model: nn.Module, path: str | Path, latents: torch.Tensor) -> float:
    """Max absolute difference between `model` and the reloaded export on `latents` (0.0 when exact)."""
    from .models import load_generator

    reloaded, _ = load_generator(str(path))
    with torch.no_grad():
        return float((model(latents) - reloaded(latents)).abs().max())
