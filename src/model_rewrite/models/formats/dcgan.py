"""DCGAN torch checkpoints (`netG_state_dict` in the standard `main.N` layout), and the pretrained faces
model that ships as such a checkpoint inside the `gan-face-generate` wheel (checked by sha256); and an edited
DCGAN written back into a copy of such a checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from ..checkpoint import changed_tensors, load_strict, read_torch_checkpoint, sha256_file, with_tensors, write_torch_checkpoint
from ..info import ModelOrigin
from ..dcgan import DCGANGenerator

FACES_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
FACES_INSTALL = "pip install --no-deps gan-face-generate==1.1.1"


def faces_checkpoint_path() -> Path:
    """Where the pretrained face DCGAN's weights lie inside the installed `gan-face-generate` wheel."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the default face model needs the package gan-face-generate; install it with `{FACES_INSTALL}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "weights.tar"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `{FACES_INSTALL}`")
    return path


def dcgan_key(key: str, model: DCGANGenerator) -> str:
    """Our key for a key of the standard DCGAN checkpoint layout (`main.0.weight`, `main.1.running_mean`, ...).

    In the standard layout block i has `main.{3i}` (conv), `main.{3i+1}` (BatchNorm) and `main.{3i+2}`
    (ReLU, no state); the last block has `main.{3i}` (conv) and Tanh. Used by the loader (file -> ours)
    and the writer (ours -> file)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "main" or not parts[1].isdigit():
        raise ModelLoadError(f"unexpected key {key!r} in a DCGAN checkpoint (expected main.N.*)")
    block, slot = divmod(int(parts[1]), 3)
    if block >= len(model.block_names) or slot == 2:
        raise ModelLoadError(f"key {key!r} does not fit a {model.resolution}px DCGAN")
    return f"{model.block_names[block]}.{'conv' if slot == 0 else 'norm'}.{'.'.join(parts[2:])}"


def state_dict_from_sequential(sd: dict[str, torch.Tensor], model: DCGANGenerator) -> dict[str, torch.Tensor]:
    """Map the standard DCGAN checkpoint layout to ours (`dcgan_key`)."""
    return {dcgan_key(key, model): value for key, value in sd.items()}


def _generator_state_dict(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """The generator state dict of a checkpoint: its `netG_state_dict`, or the checkpoint itself (bare)."""
    sd = ckpt.get("netG_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or "main.0.weight" not in sd:
        raise ModelLoadError(f"{path} holds no DCGAN generator state dict (netG_state_dict with main.N.* keys)")
    return sd


def load_dcgan_checkpoint(path: str | Path, expected_sha256: str | None = None) -> DCGANGenerator:
    """A DCGAN from a torch checkpoint holding `netG_state_dict` (or a bare `main.N.*` state dict).

    Read with `weights_only=True`: nothing in the file is executed. With `expected_sha256`, a file with
    other bytes is refused before it is read.
    """
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise ModelLoadError(
                f"{path} has sha256 {got[:12]}..., expected {expected_sha256[:12]}...; "
                f"the file is damaged or another version: reinstall with `{FACES_INSTALL}`"
            )
    sd = _generator_state_dict(read_torch_checkpoint(path), path)
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    convs = [k for k in sd if k.endswith(".weight") and k not in not_tensors and sd[k].dim() == 4]
    if not_tensors or "main.0.weight" not in convs or len(convs) < 2:
        raise ModelLoadError(f"{path}: a DCGAN generator state dict holds 4-D conv weights main.N.weight (from "
                             f"main.0.weight) and tensors only; found {len(convs)} conv weight(s)"
                             + (f", and non-tensors at {not_tensors[:5]}" if not_tensors else ""))
    nz, c0 = sd["main.0.weight"].shape[:2]
    resolution = 4 * 2 ** (len(convs) - 1)
    nc = sd[convs[-1]].shape[1]
    ngf = max(1, c0 // 2 ** (len(convs) - 2))
    model = DCGANGenerator(nz=nz, ngf=ngf, nc=nc, resolution=resolution)
    load_strict(model, state_dict_from_sequential(sd, model), path, names={k: dcgan_name(k, model) for k in model.state_dict()})
    return model.eval()


def dcgan_name(ours: str, model: DCGANGenerator) -> str:
    """The checkpoint's `main.N.*` key of our key (the inverse of `dcgan_key`), for messages in the file's naming."""
    block, part, rest = ours.split(".", 2)
    return f"main.{3 * model.block_names.index(block) + (0 if part == 'conv' else 1)}.{rest}"


def load_faces() -> tuple[DCGANGenerator, str, ModelOrigin]:
    """The pretrained 64 px face DCGAN from the installed wheel (sha256-checked), its file path and origin."""
    path = faces_checkpoint_path()
    return load_dcgan_checkpoint(path, FACES_SHA256), str(path), ModelOrigin("dcgan", str(path.resolve()))


def load_dcgan_file(path: str | Path) -> tuple[DCGANGenerator, str, ModelOrigin]:
    """A DCGAN from the checkpoint at `path`, the resolved path as its source, and its origin."""
    path = Path(path)
    return load_dcgan_checkpoint(path), str(path.resolve()), ModelOrigin("dcgan", str(path.resolve()))


def write_dcgan(source: Path, model: DCGANGenerator, out: Path, also_g: bool = False) -> list[str]:
    """Write `model`'s weights into a copy of the DCGAN checkpoint `source`, at `out` (atomically): the same
    top-level layout (`netG_state_dict` beside whatever else the file holds, or a bare state dict), keys and
    dtypes; only the generator tensors our model changed are replaced. Returns the changed keys."""
    if also_g:
        raise ModelLoadError("--also-g applies to checkpoints holding a training generator beside g_ema; a DCGAN checkpoint holds one")
    ckpt = read_torch_checkpoint(source)
    sd = _generator_state_dict(ckpt, source)
    changes = changed_tensors(sd, {key: dcgan_key(key, model) for key in sd}, model.state_dict())
    new = with_tensors(sd, changes)
    if sd is not ckpt:
        new = with_tensors(ckpt, {"netG_state_dict": new})
    write_torch_checkpoint(new, out, like=source)
    return list(changes)
