"""Generators: load one by name or path (models/registry.py), with a fingerprint of its weights (models/info.py).

Networks live in their own modules (dcgan, tiny, progan, stylegan2, adapter); the checkpoint formats that
build them in models/formats/, one module per format. The names below are the package's public face.
"""

from __future__ import annotations

from .formats.dcgan import FACES_INSTALL, FACES_SHA256, faces_checkpoint_path, load_dcgan_checkpoint
from .formats.exported import load_exported
from .info import ModelInfo, fingerprint_model, model_info
from .registry import DEFAULT_MODEL, FORMATS, ModelFormat, check_device, load_generator

__all__ = ["DEFAULT_MODEL", "FACES_INSTALL", "FACES_SHA256", "FORMATS", "ModelFormat", "ModelInfo", "check_device", "faces_checkpoint_path",
           "fingerprint_model", "load_dcgan_checkpoint", "load_exported", "load_generator", "model_info"]
