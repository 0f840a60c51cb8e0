"""ProGAN generator state dicts (`.pth`, read with weights_only=True; current or old key layout) -> ProGANGenerator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from ..checkpoint import load_strict, read_torch_checkpoint
from ..progan import ProGANGenerator


def _renamed_old_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """The old `features.{n-1}.*` / `output.*` layout renamed to `layer{n}.*` / `output_{R}x{R}.*`."""
    n_layers = len([k for k in sd if re.fullmatch(r"features\.\d+\.conv\.weight", k)])
    res = 4 * 2 ** ((n_layers - 2) // 2)
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"features\.(\d+)\.(.*)", key):
            out[f"layer{int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif key.startswith("output."):
            out[f"output_{res}x{res}." + key[len("output."):]] = value
        else:
            out[key] = value
    return out


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
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{source} holds a {type(sd).__name__}, not a ProGAN state dict")
    if "features.0.conv.weight" in sd:
        sd = _renamed_old_keys(sd)
    if "layer1.conv.weight" not in sd:
        hint = " (it looks like a StyleGAN2 checkpoint: use stylegan2:PATH)" if "g_ema" in sd or "style.1.weight" in sd else ""
        raise ModelLoadError(f"{source} has no layer1.conv.weight (keys {sorted(map(str, sd))[:8]}); not a ProGAN state dict{hint}")
    model = ProGANGenerator(sizes_from_state_dict(sd))
    load_strict(model, dict(sd), source)
    return model.eval()


def load_progan_checkpoint(path: str | Path) -> tuple[ProGANGenerator, str]:
    """A ProGAN from a `.pth` state dict, read with weights_only=True, and a description of its source."""
    path = Path(path)
    return progan_from_state_dict(read_torch_checkpoint(path), str(path)), f"ProGAN state dict {path.resolve()}"
