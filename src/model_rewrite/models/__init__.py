"""Generators: load one by name or path, with a fingerprint of its weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .dcgan import DCGANGenerator, state_dict_from_sequential
from .tiny import tiny_generator

FACES_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
FACES_INSTALL = "pip install --no-deps gan-face-generate==1.1.1"
DEFAULT_MODEL = "faces"


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded generator is: its id, architecture, fingerprint and source."""

    model_id: str  # name or path the user gave ("faces", "tiny", "/path/model.safetensors")
    kind: str  # architecture family ("dcgan", ...)
    fingerprint: str  # sha256 prefix of the weights (see fingerprint_model)
    resolution: int
    latent_shape: tuple[int, ...]
    source: str  # where the weights came from


def fingerprint_model(model: nn.Module) -> str:
    """16 hex digits of sha256 over every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_dcgan_checkpoint(path: Path, expected_sha256: str | None = None) -> DCGANGenerator:
    """A DCGAN from a torch checkpoint holding `netG_state_dict` (or a bare `main.N.*` state dict).

    Read with `weights_only=True`: nothing in the file is executed.
    """
    if expected_sha256 is not None:
        got = _sha256_file(path)
        if got != expected_sha256:
            raise ModelLoadError(
                f"{path} has sha256 {got[:12]}..., expected {expected_sha256[:12]}...; "
                f"the file is damaged or another version: reinstall with `{FACES_INSTALL}`"
            )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelLoadError(f"cannot read {path} as a torch checkpoint: {exc}") from None
    sd = ckpt.get("netG_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or "main.0.weight" not in sd:
        raise ModelLoadError(f"{path} holds no DCGAN generator state dict (netG_state_dict with main.N.* keys)")
    nz, c0 = sd["main.0.weight"].shape[:2]
    n_convs = len([k for k in sd if k.endswith(".weight") and sd[k].dim() == 4])
    resolution = 4 * 2 ** (n_convs - 1)
    nc = sd[[k for k in sd if k.endswith(".weight") and sd[k].dim() == 4][-1]].shape[1]
    ngf = c0 // 2 ** (n_convs - 2)
    model = DCGANGenerator(nz=nz, ngf=ngf, nc=nc, resolution=resolution)
    _load_strict(model, state_dict_from_sequential(sd, model), path)
    return model.eval()


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: object) -> None:
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


def load_exported(path: Path) -> tuple[nn.Module, dict]:
    """A generator written by `export_model` (safetensors with our JSON metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path} as safetensors: {exc}") from None
    if "model_rewrite" not in meta:
        raise ModelLoadError(f"{path} was not written by model-rewrite export (no 'model_rewrite' metadata)")
    info = json.loads(meta["model_rewrite"])
    arch = dict(info.get("architecture", {}))
    kind = arch.pop("kind", None)
    # --- begin issue 4: exported StyleGAN2 / ProGAN files (built by models/stylegan2.py, models/progan.py) ---
    if kind in ("stylegan2", "progan"):
        from .progan import ProGANGenerator
        from .stylegan2 import StyleGAN2Generator

        try:
            other = (StyleGAN2Generator if kind == "stylegan2" else ProGANGenerator)(**arch)
        except TypeError as exc:
            raise ModelLoadError(f"{path}: architecture {arch} does not fit a {kind} generator ({exc})") from None
        _load_strict(other, sd, path)
        return other.eval(), info
    if kind == "adapter":
        raise ModelLoadError(f"{path} holds the weights of an adapted custom generator: rebuild your module and "
                             "load them with safetensors.torch.load_file (see docs/models.md)")
    # --- end issue 4 ---
    if kind != "dcgan":
        raise ModelLoadError(f"{path}: unsupported architecture kind {kind!r}")
    model = DCGANGenerator(**arch)
    _load_strict(model, sd, path)
    return model.eval(), info


def load_generator(model: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Load a generator by name (`"faces"`, `"tiny"`) or path, in eval mode, with its ModelInfo.

    Paths may be our exported `.safetensors` files or DCGAN torch checkpoints (`netG_state_dict`).
    Other architectures (docs/models.md): `stylegan2:PATH` (a rosinality `.pt`, or an NVIDIA `.pkl`),
    `nvidia:PATH` or a bare `*.pkl` (NVIDIA StyleGAN2-ADA / StyleGAN3-repo pickles), `progan:PATH`.
    """
    name = str(model)
    if name in ("faces", "dcgan-face64"):
        path = faces_checkpoint_path()
        net: nn.Module = load_dcgan_checkpoint(path, FACES_SHA256)
        source = str(path)
        name = "faces"
    elif name == "tiny":
        net, source = tiny_generator(0), "seeded random weights (seed 0)"
    # --- begin issue 4: prefixed paths of other architectures (see docs/models.md) ---
    elif name.startswith("progan:"):
        from .progan import load_progan_checkpoint

        net, source = load_progan_checkpoint(name.removeprefix("progan:"))
    elif name.startswith("nvidia:"):
        from .nvidia_pickle import load_nvidia_pickle

        net, source = load_nvidia_pickle(name.removeprefix("nvidia:"))
    elif name.startswith("stylegan2:") or name.partition("?")[0].endswith(".pkl"):
        from .stylegan2 import load_stylegan2

        net, source = load_stylegan2(name.removeprefix("stylegan2:"))
    # --- end issue 4 ---
    else:
        path = Path(name)
        if not path.exists():
            raise ModelLoadError(f"unknown model {name!r}: give 'faces', 'tiny' or the path of a checkpoint")
        if path.suffix == ".safetensors":
            net, _ = load_exported(path)
        else:
            net = load_dcgan_checkpoint(path)
        source = str(path.resolve())
    net = net.to(device).eval()
    info = ModelInfo(
        model_id=name,
        kind=getattr(net, "architecture", lambda: {"kind": type(net).__name__})()["kind"],
        fingerprint=fingerprint_model(net),
        resolution=int(getattr(net, "resolution", 0)),
        latent_shape=tuple(getattr(net, "latent_shape", ())),
        source=source,
    )
    return net, info
