"""ProGAN generator state dicts (`.pth`, read with weights_only=True; current or old key layout) -> ProGANGenerator,
and an edited ProGANGenerator written back into a copy of such a file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from ..checkpoint import changed_tensors, load_strict, read_torch_checkpoint, with_tensors, write_torch_checkpoint
from ..info import ModelOrigin
from ..progan import ProGANGenerator


def progan_key(key: str, n_layers: int) -> str:
    """Our key for a state-dict key of either layout: the old `features.{n-1}.*` / `output.*` names become
    `layer{n}.*` / `output_{R}x{R}.*` (R from the number of conv layers); current names are ours. Used by
    the loader (file -> ours) and the writer (ours -> file, which keeps the file's names)."""
    res = 4 * 2 ** ((n_layers - 2) // 2)
    if m := re.fullmatch(r"features\.(\d+)\.(.*)", key):
        return f"layer{int(m.group(1)) + 1}.{m.group(2)}"
    if key.startswith("output."):
        return f"output_{res}x{res}." + key[len("output."):]
    return key


def _key_names(sd: dict[str, Any]) -> dict[str, str]:
    """File key -> our key (`progan_key`), counting the layers of the old layout when it is used."""
    old = "features.0.conv.weight" in sd
    n_layers = len([k for k in sd if re.fullmatch(r"features\.\d+\.conv\.weight", k)]) if old else 0
    return {key: progan_key(key, n_layers) if old else key for key in sd}


def _unwrapped(ckpt: Any, source: str) -> dict[str, Any]:
    """The state dict, unwrapped from {'state_dict': ...} if wrapped."""
    if isinstance(ckpt, dict) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        raise ModelLoadError(f"{source} holds a {type(ckpt).__name__}, not a ProGAN state dict")
    if not all(isinstance(k, str) for k in ckpt):
        raise ModelLoadError(f"{source} has keys that are not strings; not a ProGAN state dict")
    return ckpt


def sizes_from_state_dict(sd: dict[str, Any]) -> list[int]:
    """[z_dim, C_4, C_8, ...] read from the conv weight shapes: layer1's in/out, then every odd layer's out."""
    layers = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"layer(\d+)\.conv\.weight", k)))
    if not layers or layers != list(range(1, len(layers) + 1)) or len(layers) % 2:
        raise ModelLoadError(f"a ProGAN state dict has layer1..layer2L conv weights; found layers {layers}")
    for n in [1] + list(range(3, len(layers) + 1, 2)):
        if not isinstance(sd[f"layer{n}.conv.weight"], torch.Tensor) or sd[f"layer{n}.conv.weight"].dim() != 4:
            raise ModelLoadError(f"layer{n}.conv.weight must be a 4-D conv weight")
    w1 = sd["layer1.conv.weight"]
    return [int(w1.shape[1]), int(w1.shape[0])] + [int(sd[f"layer{n}.conv.weight"].shape[0]) for n in range(3, len(layers) + 1, 2)]


def progan_from_state_dict(sd: Any, source: str) -> ProGANGenerator:
    """A ProGANGenerator from a state dict (current or old key layout, optionally wrapped in {'state_dict': ...})."""
    sd = _unwrapped(sd, source)
    names = {ours: key for key, ours in _key_names(sd).items()}  # errors name the file's own keys
    sd = {ours: sd[key] for ours, key in names.items()}
    if "layer1.conv.weight" not in sd:
        hint = " (it looks like a StyleGAN2 checkpoint: use stylegan2:PATH)" if "g_ema" in sd or "style.1.weight" in sd else ""
        raise ModelLoadError(f"{source} has no layer1.conv.weight (keys {sorted(map(str, sd))[:8]}); not a ProGAN state dict{hint}")
    model = ProGANGenerator(sizes_from_state_dict(sd))
    load_strict(model, dict(sd), source, names=names)
    return model.eval()


def load_progan_checkpoint(path: str | Path) -> tuple[ProGANGenerator, str, ModelOrigin]:
    """A ProGAN from a `.pth` state dict, read with weights_only=True, a description of its source and its origin."""
    path = Path(path)
    return (progan_from_state_dict(read_torch_checkpoint(path), str(path)), f"ProGAN state dict {path.resolve()}",
            ModelOrigin("progan", str(path.resolve())))


def write_progan(source: Path, model: ProGANGenerator, out: Path, also_g: bool = False) -> list[str]:
    """Write `model`'s weights into a copy of the ProGAN state dict `source`, at `out` (atomically): the same
    wrapper, key layout (current or old), order and dtypes; only the tensors our model changed are replaced.
    Returns the changed keys. `also_g` does not apply (the file holds one generator)."""
    if also_g:
        raise ModelLoadError("--also-g applies to checkpoints holding a training generator beside g_ema; a ProGAN state dict holds one")
    ckpt = read_torch_checkpoint(source)
    sd = _unwrapped(ckpt, str(source))
    names = _key_names(sd)
    ours = model.state_dict()
    unknown = [key for key, name in names.items() if name not in ours]
    if unknown:
        raise ModelLoadError(f"{source}: keys {unknown[:5]} are not part of the loaded ProGAN; was the file replaced?")
    changes = changed_tensors(sd, names, ours)
    new = with_tensors(sd, changes)
    if sd is not ckpt:
        new = with_tensors(ckpt, {"state_dict": new})
    write_torch_checkpoint(new, out, like=source)
    return list(changes)
