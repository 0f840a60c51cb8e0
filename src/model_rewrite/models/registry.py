"""The model names `load_generator` accepts: a table of formats, each a name matcher and a loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .formats.dcgan import load_dcgan_file, load_faces
from .formats.exported import load_exported_file
from .formats.nvidia import load_nvidia_pickle
from .formats.progan import load_progan_checkpoint
from .formats.rosinality import load_rosinality
from .formats.sampling import split_sampling_options
from .info import ModelInfo, ModelOrigin, model_info
from .stylegan2 import StyleGAN2Generator
from .tiny import tiny_generator

DEFAULT_MODEL = "faces"

Matcher = Callable[[str], str | None]  # model name -> the loader's argument (the name less its prefix), or None
# that argument -> (network, where its weights came from, the file and format it was read from or None)
Loader = Callable[[str], tuple[nn.Module, str, ModelOrigin | None]]


@dataclass(frozen=True)
class ModelFormat:
    """One accepted form of model name: how it is written, what it loads, how to recognise and load it."""

    form: str  # as the user writes it, e.g. "progan:PATH"; listed in the error for an unknown model
    description: str
    match: Matcher
    load: Loader
    model_id: str | None = None  # the ModelInfo id of every name of this form (aliases of one model); None: the name


def named(*names: str) -> Matcher:
    """Matches exactly these names."""
    return lambda name: name if name in names else None


def prefixed(prefix: str) -> Matcher:
    """Matches `prefix` + anything; the loader gets the rest."""
    return lambda name: name.removeprefix(prefix) if name.startswith(prefix) else None


def pickle_path(name: str) -> str | None:
    """Matches `*.pkl`, optionally followed by `?` sampling options; the file need not exist yet (its loader says so)."""
    return name if name.partition("?")[0].endswith(".pkl") else None


def existing_path(suffix: str | None = None) -> Matcher:
    """Matches the path of an existing file (or folder), with this suffix if one is given."""
    return lambda name: name if Path(name).exists() and suffix in (None, Path(name).suffix) else None


def load_stylegan2(spec: str) -> tuple[StyleGAN2Generator, str, ModelOrigin]:
    """A StyleGAN2 from a rosinality `.pt` checkpoint or (for `.pkl`) an NVIDIA network pickle, a
    description of its source and its origin. `spec` may end in sampling options: `PATH?truncation_psi=0.5`."""
    path, _ = split_sampling_options(spec)
    return load_nvidia_pickle(spec) if path.suffix == ".pkl" else load_rosinality(spec)


def load_tiny(_: str) -> tuple[nn.Module, str, None]:
    """The seeded 32 px test model (built from code: no file)."""
    return tiny_generator(0), "seeded random weights (seed 0)", None


# Walked in order; the first form whose matcher accepts a name loads it. Prefixed forms come before the
# bare-path ones, so that `progan:x.pkl` is a ProGAN file; plain paths come last.
FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("faces", "the pretrained face DCGAN; also 'dcgan-face64'", named("faces", "dcgan-face64"),
                lambda _: load_faces(), model_id="faces"),
    ModelFormat("tiny", "a seeded 32 px test model", named("tiny"), load_tiny),
    ModelFormat("progan:PATH", "a ProGAN state dict", prefixed("progan:"), load_progan_checkpoint),
    ModelFormat("nvidia:PATH", "an NVIDIA StyleGAN2-ADA/StyleGAN3-repo pickle", prefixed("nvidia:"), load_nvidia_pickle),
    ModelFormat("stylegan2:PATH", "a rosinality .pt or an NVIDIA .pkl", prefixed("stylegan2:"), load_stylegan2),
    ModelFormat("PATH.pkl", "an NVIDIA pickle", pickle_path, load_stylegan2),
    ModelFormat("PATH.safetensors", "a model-rewrite export", existing_path(".safetensors"), load_exported_file),
    ModelFormat("PATH", "any other existing file: a DCGAN torch checkpoint", existing_path(), load_dcgan_file),
)


def find_format(name: str) -> tuple[ModelFormat, str]:
    """The first format that accepts `name`, and its loader's argument; ModelLoadError listing the forms if none does."""
    for fmt in FORMATS:
        arg = fmt.match(name)
        if arg is not None:
            return fmt, arg
    forms = "; ".join(f"{fmt.form} ({fmt.description})" for fmt in FORMATS)
    raise ModelLoadError(f"unknown model {name!r}: no such file and no built-in name; give one of: {forms}; "
                         "see docs/models.md")


def check_device(device: str | torch.device) -> torch.device:
    """The torch device named `device`, if this machine has it; ModelLoadError naming the fix otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ModelLoadError(f"device {device!r} is not available: this machine has {have} (or torch was built "
                             "without CUDA); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} cannot run the models: use cpu, cuda, cuda:N or mps")
    return dev


def load_generator(model: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Load a generator by name (`"faces"`, `"tiny"`) or path, in eval mode, with its ModelInfo.

    Paths may be our exported `.safetensors` files or DCGAN torch checkpoints (`netG_state_dict`).
    Other architectures (docs/models.md): `stylegan2:PATH` (a rosinality `.pt`, or an NVIDIA `.pkl`),
    `nvidia:PATH` or a bare `*.pkl` (NVIDIA StyleGAN2-ADA / StyleGAN3-repo pickles), `progan:PATH`.
    The accepted forms are the table FORMATS.
    """
    name = str(model)
    check_device(device)  # before any file is read
    fmt, arg = find_format(name)
    net, source, origin = fmt.load(arg)
    net = net.to(device).eval()
    return net, model_info(net, fmt.model_id or name, source, origin)
