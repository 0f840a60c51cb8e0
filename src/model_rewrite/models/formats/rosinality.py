"""rosinality/stylegan2-pytorch checkpoints (`.pt`, read with weights_only=True) -> our StyleGAN2Generator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from ..checkpoint import load_strict, read_torch_checkpoint
from ..stylegan2 import StyleGAN2Generator, fir_taps
from .sampling import apply_sampling_options, split_sampling_options


def architecture_from_rosinality(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """StyleGAN2Generator arguments read from the shapes of a rosinality `g_ema` state dict (FORMATS.md 1.3)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd or not isinstance(sd[key], torch.Tensor):
            raise ModelLoadError(f"the state dict has no tensor {key!r}; it is not a rosinality StyleGAN2 g_ema")
        return tuple(sd[key].shape)

    mlp = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    n_convs = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)])
    if not mlp or mlp != list(range(1, len(mlp) + 1)):
        raise ModelLoadError(f"mapping layers style.1..style.N not found (got {mlp}); not a rosinality StyleGAN2 g_ema")
    if n_convs % 2:
        raise ModelLoadError(f"found {n_convs} convs.*.conv.weight; a rosinality StyleGAN2 has an even number")
    log_size = n_convs // 2 + 2
    channels = [shape("conv1.conv.weight")[1]] + [shape(f"convs.{2 * k}.conv.weight")[1] for k in range(log_size - 2)]
    return {"resolution": 2**log_size, "channels": channels, "z_dim": shape("style.1.weight")[1],
            "w_dim": shape(f"style.{len(mlp)}.weight")[0], "n_mlp": len(mlp),
            "mapping_features": shape("style.1.weight")[0], "lr_mlp": 0.01}


def state_dict_from_rosinality(sd: dict[str, torch.Tensor], model: StyleGAN2Generator,
                               latent_avg: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Our state dict from a rosinality `g_ema` (FORMATS.md 1.3 and 4.5); the blur/upsample kernels are
    checked and dropped. Keys the model has but the file lacks (`sampling.*`, and `mapping.w_avg`
    without `latent_avg`) take the model's current values."""
    convs = [f"{b}.{c}" for b, c in model.conv_names()]  # conv index j of rosinality = convs[j + 1]
    rgbs = [f"{b}.torgb" for b in model.block_names]
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    expected_kernel = torch.outer(fir_taps(model.blur_kernel), fir_taps(model.blur_kernel)) * 4
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            unexpected.append(key)
            continue
        if m := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):
            out[f"mapping.fc{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif key == "input.input":
            out["b4.const"] = value.reshape(value.shape[1:]) if value.dim() == 4 and value.shape[0] == 1 else value
        elif m := re.fullmatch(r"(conv1|convs\.(\d+))\.(conv\.weight|conv\.modulation\.(?:weight|bias)|noise\.weight|activate\.bias)", key):
            layer = convs[0] if m.group(1) == "conv1" else _index(convs, int(m.group(2) or 0) + 1, key)
            part = m.group(3)
            if part == "conv.weight":
                out[f"{layer}.conv.weight"] = value[0] if value.dim() == 5 and value.shape[0] == 1 else value
            elif part.startswith("conv.modulation"):
                out[f"{layer}.affine.{part.rsplit('.', 1)[1]}"] = value
            elif part == "noise.weight":
                out[f"{layer}.noise_strength"] = value.reshape(()) if value.numel() == 1 else value
            else:
                out[f"{layer}.bias"] = value
        elif m := re.fullmatch(r"(to_rgb1|to_rgbs\.(\d+))\.(conv\.weight|conv\.modulation\.(?:weight|bias)|bias)", key):
            rgb = rgbs[0] if m.group(1) == "to_rgb1" else _index(rgbs, int(m.group(2) or 0) + 1, key)
            part = m.group(3)
            if part == "conv.weight":
                out[f"{rgb}.weight"] = value[0] if value.dim() == 5 and value.shape[0] == 1 else value
            elif part.startswith("conv.modulation"):
                out[f"{rgb}.affine.{part.rsplit('.', 1)[1]}"] = value
            else:
                out[f"{rgb}.bias"] = value.reshape(-1)
        elif m := re.fullmatch(r"noises\.noise_(\d+)", key):
            layer = _index(convs, int(m.group(1)), key)
            out[f"{layer}.noise_const"] = value.reshape(value.shape[-2:]) if value.dim() == 4 else value
        elif re.fullmatch(r"convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel", key):
            if value.shape != expected_kernel.shape or not torch.allclose(value.float(), expected_kernel, atol=1e-6):
                raise ModelLoadError(f"{key} is not the standard [1,3,3,1] blur kernel; other blur kernels are not supported")
        else:
            unexpected.append(key)
    if unexpected:
        raise ModelLoadError(f"keys that are not part of a rosinality StyleGAN2 g_ema: {unexpected[:8]}")
    own = model.state_dict()
    if latent_avg is not None:
        out["mapping.w_avg"] = latent_avg.reshape(-1)
    for key in ("mapping.w_avg", "sampling.psi", "sampling.cutoff", "sampling.noise_mode"):
        out.setdefault(key, own[key].clone())
    return out


def _index(names: list[str], i: int, key: str) -> str:
    if i >= len(names):
        raise ModelLoadError(f"key {key!r} does not fit the architecture read from the other keys (index {i} of {len(names)})")
    return names[i]


def stylegan2_from_rosinality(ckpt: Any, source: str) -> StyleGAN2Generator:
    """A StyleGAN2Generator from a loaded rosinality checkpoint: {'g_ema', 'latent_avg'} (convert_weight.py),
    a train.py checkpoint ({'g', 'd', 'g_ema', 'args', ...}, no latent_avg) or a bare g_ema state dict.

    Without latent_avg, w_avg is the mean of 4096 mapped latents from a fixed seed (deterministic).
    """
    if not isinstance(ckpt, dict):
        raise ModelLoadError(f"{source} holds a {type(ckpt).__name__}, not a rosinality checkpoint dict")
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
    elif "style.1.weight" in ckpt:
        sd, latent_avg = ckpt, None
    else:
        hint = " (a ProGAN state dict: use progan:PATH)" if any(str(k).startswith(("layer1.", "features.0.")) for k in ckpt) else ""
        raise ModelLoadError(f"{source} has no 'g_ema' (top-level keys {sorted(map(str, ckpt))[:8]}); "
                             f"not a rosinality StyleGAN2 checkpoint{hint}")
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{source}: 'g_ema' is a {type(sd).__name__}, not a state dict")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise ModelLoadError(f"{source}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor of w_dim values")
    model = StyleGAN2Generator(**architecture_from_rosinality(sd))
    load_strict(model, state_dict_from_rosinality(sd, model, latent_avg), source)
    if latent_avg is None:
        model.mapping.w_avg.copy_(model.estimate_w_avg())
    return model.eval()


def load_rosinality(spec: str | Path) -> tuple[StyleGAN2Generator, str]:
    """A StyleGAN2 from a rosinality `.pt` checkpoint and a description of its source. `spec` may end in
    sampling options: `PATH?truncation_psi=0.5`. Nothing in the file is executed."""
    path, options = split_sampling_options(spec)
    model = stylegan2_from_rosinality(read_torch_checkpoint(path), str(path))
    apply_sampling_options(model, options)
    return model, f"rosinality StyleGAN2 checkpoint {path.resolve()} (g_ema)"
