"""Generators: load one by name or path, with a fingerprint of its weights (models/info.py).

Networks live in their own modules (dcgan, tiny, progan, stylegan2, adapter); the checkpoint formats that
build them in models/formats/, one module per format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .formats.dcgan import FACES_INSTALL, FACES_SHA256, faces_checkpoint_path, load_dcgan_checkpoint, load_dcgan_file, load_faces
from .formats.exported import load_exported, load_exported_file
from .formats.nvidia import load_nvidia_pickle
from .formats.progan import load_progan_checkpoint
from .formats.rosinality import load_rosinality
from .formats.sampling import split_sampling_options
from .info import ModelInfo, fingerprint_model, model_info
from .stylegan2 import StyleGAN2Generator
from .tiny import tiny_generator

__all__ = ["DEFAULT_MODEL", "FACES_INSTALL", "FACES_SHA256", "ModelInfo", "faces_checkpoint_path", "fingerprint_model",
           "load_dcgan_checkpoint", "load_exported", "load_generator", "model_info"]

DEFAULT_MODEL = "faces"


def load_stylegan2(spec: str) -> tuple[StyleGAN2Generator, str]:
    """A StyleGAN2 from a rosinality `.pt` checkpoint or (for `.pkl`) an NVIDIA network pickle, and a
    description of its source. `spec` may end in sampling options: `PATH?truncation_psi=0.5`."""
    path, _ = split_sampling_options(spec)
    return load_nvidia_pickle(spec) if path.suffix == ".pkl" else load_rosinality(spec)


def load_generator(model: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Load a generator by name (`"faces"`, `"tiny"`) or path, in eval mode, with its ModelInfo.

    Paths may be our exported `.safetensors` files or DCGAN torch checkpoints (`netG_state_dict`).
    Other architectures (docs/models.md): `stylegan2:PATH` (a rosinality `.pt`, or an NVIDIA `.pkl`),
    `nvidia:PATH` or a bare `*.pkl` (NVIDIA StyleGAN2-ADA / StyleGAN3-repo pickles), `progan:PATH`.
    """
    name = str(model)
    net: nn.Module
    if name in ("faces", "dcgan-face64"):
        net, source = load_faces()
        name = "faces"
    elif name == "tiny":
        net, source = tiny_generator(0), "seeded random weights (seed 0)"
    elif name.startswith("progan:"):
        net, source = load_progan_checkpoint(name.removeprefix("progan:"))
    elif name.startswith("nvidia:"):
        net, source = load_nvidia_pickle(name.removeprefix("nvidia:"))
    elif name.startswith("stylegan2:") or name.partition("?")[0].endswith(".pkl"):
        net, source = load_stylegan2(name.removeprefix("stylegan2:"))
    else:
        path = Path(name)
        if not path.exists():
            raise ModelLoadError(f"unknown model {name!r}: give 'faces', 'tiny' or the path of a checkpoint")
        net, source = (load_exported_file if path.suffix == ".safetensors" else load_dcgan_file)(path)
    net = net.to(device).eval()
    return net, model_info(net, name, source)
