"""Export an edited generator, in its input file's own format or as our safetensors file, and check that
the written file reloads through our loader and renders the edited images exactly.

`same` writes the edited weights into a copy of the checkpoint the model was read from (ModelInfo.origin),
with the writer that sits beside that format's reader in models/formats/ (rosinality, NVIDIA, ProGAN,
DCGAN); the edits' metadata then travels in a sidecar `PATH.edits.json`, since those formats have no
place for it. `safetensors` writes our own file (models/formats/exported.py), metadata inside.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import json_bytes, stage
from .errors import ExportError
from .models import load_generator
from .models.formats.dcgan import load_dcgan_file, write_dcgan
from .models.formats.exported import EXPORT_VERSION, export_model
from .models.formats.nvidia import load_nvidia_pickle
from .models.formats.nvidia_writer import write_nvidia_pickle
from .models.formats.progan import load_progan_checkpoint, write_progan
from .models.formats.rosinality import load_rosinality, write_rosinality
from .models.checkpoint import sha256_file
from .models.info import ModelInfo, ModelOrigin, fingerprint_model

__all__ = ["EXPORT_FORMATS", "EXPORT_VERSION", "ExportResult", "FormatWriter", "WRITERS", "check_export", "choose_format",
           "export_edited", "export_model", "reload_export", "sidecar_path"]

EXPORT_FORMATS = ("same", "safetensors")


@dataclass(frozen=True)
class FormatWriter:
    """How an edited model is written back into a file of one checkpoint format, and read again."""

    description: str  # what the written file is, for messages
    write: Callable[[Path, Any, Path, bool], list[str]]  # (input file, model, output, also_g) -> changed keys
    load: Callable[[str], tuple[nn.Module, str, ModelOrigin | None]]  # the format's own loader (sampling options allowed)


# ModelOrigin.format -> its writer; "safetensors" (our export) is written by export_model.
WRITERS: dict[str, FormatWriter] = {
    "rosinality": FormatWriter("a rosinality StyleGAN2 checkpoint", write_rosinality, load_rosinality),
    "nvidia": FormatWriter("an NVIDIA network pickle", write_nvidia_pickle, load_nvidia_pickle),
    "progan": FormatWriter("a ProGAN state dict", write_progan, load_progan_checkpoint),
    "dcgan": FormatWriter("a DCGAN torch checkpoint", write_dcgan, load_dcgan_file),
}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, its format (an origin format or "safetensors"), the tensors it
    changed (file keys; empty for safetensors), the metadata sidecar (None when the file holds it) and, when
    the export was checked before it was published, the max difference of the reloaded file's images."""

    path: Path
    format: str
    changed: tuple[str, ...] = ()
    sidecar: Path | None = None
    max_difference: float | None = None


def sidecar_path(path: str | Path) -> Path:
    """Where the edits' metadata of a file in a checkpoint format is written: `PATH.edits.json`."""
    return Path(f"{path}.edits.json")


def choose_format(info: ModelInfo, out: str | Path, requested: str | None = None) -> str:
    """The format to write: "safetensors" or the model's origin format. Without a request, the origin's
    format when the model was read from a file and `out` does not end in `.safetensors`. ExportError for a
    format the model cannot be written in, and for an `out` that is the model's own file."""
    out = Path(out)
    origin = info.origin
    _refuse_overwriting(info, out)
    if requested not in (None, *EXPORT_FORMATS):
        raise ExportError(f"unknown export format {requested!r}; use one of {list(EXPORT_FORMATS)}")
    if requested is None:
        requested = "same" if origin is not None and out.suffix != ".safetensors" else "safetensors"
    if requested == "safetensors" or (origin is not None and origin.format == "safetensors"):
        if out.suffix != ".safetensors":
            raise ExportError(f"a safetensors export is a .safetensors file, got {out.name}; name the output *.safetensors")
        return "safetensors"
    if origin is None:
        raise ExportError(f"model {info.model_id!r} was built from code, not read from a checkpoint file, so it has no "
                          "format of its own to write; export it with --format safetensors")
    if origin.format not in WRITERS:
        raise ExportError(f"cannot write {origin.format!r} files; export with --format safetensors")
    if out.suffix == ".safetensors":
        raise ExportError(f"--format same writes {WRITERS[origin.format].description}, not safetensors; give --out another "
                          "file name, or use --format safetensors")
    return origin.format


def _refuse_overwriting(info: ModelInfo, out: Path) -> None:
    """The output must not be the input file (symlinks resolved, hard links too)."""
    if info.origin is None:
        return
    source = Path(info.origin.path)
    if out.resolve() == source.resolve() or (out.exists() and source.exists() and os.path.samefile(out, source)):
        raise ExportError(f"--out {out} is the model's own file {source}; write the edited model to another path")


def export_edited(model: nn.Module, info: ModelInfo, out: str | Path, edits: Sequence[Any] = (), fmt: str | None = None,
                  also_g: bool = False, check_latents: torch.Tensor | None = None) -> ExportResult:
    """Write the (edited) `model`, loaded as `info`, to `out` in `fmt` ("same", "safetensors", or None for
    `choose_format`'s default); refuses to overwrite the input file.

    The file (and its sidecar) are written to temporaries beside `out` first; with `check_latents`, the
    temporary is reloaded by our loader and must render exactly the images of `model` on them (else
    ExportError, and nothing is published). Then the file and the sidecar are renamed into place; the sidecar
    holds the file's sha256, so the pair can be checked. `out` is never half-written, and a check is never
    disturbed by another process writing the same `out`."""
    out = Path(out)
    written = choose_format(info, out, fmt)
    if written == "safetensors" and also_g:
        raise ExportError("--also-g applies to --format same (a checkpoint with a training generator beside g_ema)")
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{out.suffix}")
    side_tmp = None
    try:
        if written == "safetensors":
            export_model(model, info, tmp, edits)
            changed: list[str] = []
        else:
            assert info.origin is not None
            changed = WRITERS[written].write(Path(info.origin.path), model, tmp, also_g)
        diff = None
        if check_latents is not None:
            diff = check_export(model, ExportResult(tmp, written), check_latents, info)
            if diff != 0.0:
                raise ExportError(f"the written file does not reproduce the edited model (reloaded max difference "
                                  f"{diff:.2e}); nothing was written to {out}")
        sidecar = None
        if written != "safetensors":
            assert info.origin is not None
            arch = getattr(model, "architecture", None)
            meta = {"version": EXPORT_VERSION, "format": written, "file": out.name, "file_sha256": sha256_file(tmp),
                    "base_model": info.model_id, "base_file": info.origin.path, "sampling_options": info.origin.options,
                    "base_fingerprint": info.fingerprint, "fingerprint": fingerprint_model(model),
                    "architecture": arch() if callable(arch) else None, "changed_tensors": changed, "edits": list(edits)}
            sidecar = sidecar_path(out)
            side_tmp = stage(sidecar, lambda f: f.write(json_bytes(meta)))
        os.replace(tmp, out)  # published last, the file then its sidecar
        if side_tmp is not None:
            os.replace(side_tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
        if side_tmp is not None:
            side_tmp.unlink(missing_ok=True)
    return ExportResult(out, written, tuple(changed), sidecar, diff)


def reload_export(result: ExportResult, info: ModelInfo | None = None) -> nn.Module:
    """The written file, loaded by our own loader of its format (with the sampling options of `info`)."""
    if result.format == "safetensors":
        return load_generator(str(result.path))[0]
    options = info.origin.options if info is not None and info.origin is not None else ""
    return WRITERS[result.format].load(f"{result.path}?{options}" if options else str(result.path))[0].eval()


def check_export(model: nn.Module, written: ExportResult | str | Path, latents: torch.Tensor,
                 info: ModelInfo | None = None) -> float:
    """Max absolute difference between `model` and the reloaded export on `latents` (0.0 when exact).
    A path alone is read as our safetensors file; `info` gives the sampling options to reload with."""
    result = written if isinstance(written, ExportResult) else ExportResult(Path(written), "safetensors")
    reloaded = reload_export(result, info).to(latents.device)
    with torch.no_grad():
        return float((model(latents) - reloaded(latents)).abs().max())
