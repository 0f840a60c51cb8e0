"""Export an edited generator (the format lives in models/formats/exported.py), and check that it reloads identically."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .models import load_generator
from .models.formats.exported import EXPORT_VERSION, export_model

__all__ = ["EXPORT_VERSION", "check_export", "export_model"]


def check_export(model: nn.Module, path: str | Path, latents: torch.Tensor) -> float:
    """Max absolute difference between `model` and the reloaded export on `latents` (0.0 when exact)."""
    reloaded, _ = load_generator(str(path))
    with torch.no_grad():
        return float((model(latents) - reloaded(latents)).abs().max())
