"""Our own export format: a generator's weights as safetensors, with JSON metadata naming its architecture,
base model, fingerprints and edits; the writer and the reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ...cache import save_tensors
from ...errors import ModelLoadError
from ..checkpoint import check_file, load_strict
from ..dcgan import DCGANGenerator
from ..info import ModelInfo, ModelOrigin, fingerprint_model
from ..progan import ProGANGenerator
from ..stylegan2 import StyleGAN2Generator

EXPORT_VERSION = 1
METADATA_KEY = "model_rewrite"  # the safetensors metadata entry holding our JSON

# The architectures an exported file can be rebuilt as: `architecture()["kind"]` -> the class whose
# constructor takes the rest of `architecture()`.
REBUILDABLE: dict[str, type[nn.Module]] = {"dcgan": DCGANGenerator, "stylegan2": StyleGAN2Generator,
                                           "progan": ProGANGenerator}


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


def rebuild(kind: Any, arch: dict[str, Any], path: Path) -> nn.Module:
    """An untrained generator of the exported architecture `kind` with constructor arguments `arch`."""
    if kind == "adapter":
        raise ModelLoadError(f"{path} holds the weights of an adapted custom generator: rebuild your module and "
                             "load them with safetensors.torch.load_file (see docs/models.md)")
    if not isinstance(kind, str) or kind not in REBUILDABLE:
        raise ModelLoadError(f"{path}: unsupported architecture kind {kind!r}")
    try:
        return REBUILDABLE[kind](**arch)
    except (TypeError, ValueError, AssertionError, ZeroDivisionError, ModelLoadError) as exc:
        raise ModelLoadError(f"{path}: architecture {arch} does not fit a {kind} generator ({exc})") from None


def load_exported(path: str | Path) -> tuple[nn.Module, dict]:
    """A generator written by `export_model` (in eval mode) and the file's metadata."""
    from safetensors import safe_open  # imported on first use: loading a model by name needs none of it
    from safetensors.torch import load_file

    path = Path(path)
    check_file(path, "a safetensors file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- whatever safetensors raises, the file is refused with the reason
        raise ModelLoadError(f"cannot read {path} as safetensors ({type(exc).__name__}: {exc})") from None
    if METADATA_KEY not in meta:
        raise ModelLoadError(f"{path} was not written by model-rewrite export (no {METADATA_KEY!r} metadata)")
    try:
        info = json.loads(meta[METADATA_KEY])
        arch = dict(info.get("architecture", {}))
    except (ValueError, TypeError, AttributeError):
        raise ModelLoadError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object with an 'architecture'") from None
    model = rebuild(arch.pop("kind", None), arch, path)
    load_strict(model, sd, path)
    return model.eval(), info


def load_exported_file(path: str | Path) -> tuple[nn.Module, str, ModelOrigin]:
    """An exported generator, the resolved path as its source, and its origin."""
    path = Path(path)
    return load_exported(path)[0], str(path.resolve()), ModelOrigin("safetensors", str(path.resolve()))
