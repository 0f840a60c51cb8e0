"""rosinality/stylegan2-pytorch checkpoints (`.pt`, read with weights_only=True) -> our StyleGAN2Generator, and
an edited StyleGAN2Generator written back into a copy of such a checkpoint."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError
from ..checkpoint import changed_tensors, fit_shape, load_strict, moved_by, read_torch_checkpoint, with_tensors, write_torch_checkpoint
from ..info import ModelOrigin
from ..stylegan2 import StyleGAN2Generator, fir_taps
from .sampling import apply_sampling_options, options_text, split_sampling_options


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


LATENT_AVG = "mapping.w_avg"  # our key of the file's top-level `latent_avg`
_KERNEL = re.compile(r"convs\.\d+\.conv\.blur\.kernel|to_rgbs\.\d+\.upsample\.kernel")
_CONV = re.compile(r"(conv1|convs\.(\d+))\.(conv\.weight|conv\.modulation\.(weight|bias)|noise\.weight|activate\.bias)")
_RGB = re.compile(r"(to_rgb1|to_rgbs\.(\d+))\.(conv\.weight|conv\.modulation\.(weight|bias)|bias)")


def rosinality_key(key: str, model: StyleGAN2Generator) -> str | None:
    """Our state-dict key for the rosinality `g_ema` key `key` (FORMATS.md 1.3 and 4.5), None for the fixed
    blur/upsample kernels (not stored: ours are built from the taps). The tensors differ at most by
    dimensions of size 1 (`fit_shape`) and are stored the same way (unscaled, FORMATS.md 1.4), so this one
    mapping serves the loader (file -> ours) and the writer (ours -> file). KeyError for other keys."""
    convs = [f"{b}.{c}" for b, c in model.conv_names()]  # conv index j of rosinality = convs[j + 1]
    rgbs = [f"{b}.torgb" for b in model.block_names]
    if m := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):
        return f"mapping.fc{int(m.group(1)) - 1}.{m.group(2)}"
    if key == "input.input":
        return "b4.const"
    if m := _CONV.fullmatch(key):
        layer = convs[0] if m.group(1) == "conv1" else _index(convs, int(m.group(2)) + 1, key)
        part = {"conv.weight": "conv.weight", "noise.weight": "noise_strength", "activate.bias": "bias"}.get(m.group(3))
        return f"{layer}.{part or 'affine.' + m.group(4)}"
    if m := _RGB.fullmatch(key):
        rgb = rgbs[0] if m.group(1) == "to_rgb1" else _index(rgbs, int(m.group(2)) + 1, key)
        part = {"conv.weight": "weight", "bias": "bias"}.get(m.group(3))
        return f"{rgb}.{part or 'affine.' + m.group(4)}"
    if m := re.fullmatch(r"noises\.noise_(\d+)", key):
        return f"{_index(convs, int(m.group(1)), key)}.noise_const"
    if _KERNEL.fullmatch(key):
        return None
    raise KeyError(key)


def rosinality_names(model: StyleGAN2Generator) -> dict[str, str]:
    """Our key -> the rosinality file's key, for every tensor a g_ema of this architecture holds (the inverse
    of `rosinality_key`, so that errors name keys as the file does); `latent_avg` is the file's top level."""
    convs, rgbs = len(model.conv_names()), len(model.block_names)
    parts = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias")
    candidates = [f"style.{i}.{w}" for i in range(1, model.n_mlp + 1) for w in ("weight", "bias")] + ["input.input"]
    candidates += [f"{c}.{p}" for c in ["conv1", *(f"convs.{j}" for j in range(convs - 1))]
                   for p in (*parts, "noise.weight", "activate.bias")]
    candidates += [f"{c}.{p}" for c in ["to_rgb1", *(f"to_rgbs.{j}" for j in range(rgbs - 1))] for p in (*parts, "bias")]
    candidates += [f"noises.noise_{j}" for j in range(convs)]
    out = {LATENT_AVG: "latent_avg"}
    for key in candidates:
        try:
            ours = rosinality_key(key, model)
        except (KeyError, ModelLoadError):
            continue
        if ours is not None:
            out[ours] = key
    return out


def state_dict_from_rosinality(sd: dict[str, torch.Tensor], model: StyleGAN2Generator,
                               latent_avg: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Our state dict from a rosinality `g_ema` (mapped by `rosinality_key`); the blur/upsample kernels are
    checked and dropped. Keys the model has but the file lacks (`sampling.*`, and `mapping.w_avg`
    without `latent_avg`) take the model's current values."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    expected_kernel = torch.outer(fir_taps(model.blur_kernel), fir_taps(model.blur_kernel)) * 4
    for key, value in sd.items():
        try:
            ours = rosinality_key(key, model) if isinstance(value, torch.Tensor) else ""
        except KeyError:
            ours = ""
        if ours == "":
            unexpected.append(key)
        elif ours is not None:
            out[ours] = fit_shape(value, own[ours].shape)
        elif value.shape != expected_kernel.shape or not torch.allclose(value.float(), expected_kernel, atol=1e-6):
            raise ModelLoadError(f"{key} is not the standard [1,3,3,1] blur kernel; other blur kernels are not supported")
    if unexpected:
        raise ModelLoadError(f"keys that are not part of a rosinality StyleGAN2 g_ema: {unexpected[:8]}")
    if latent_avg is not None:
        out[LATENT_AVG] = fit_shape(latent_avg, own[LATENT_AVG].shape)
    for key in (LATENT_AVG, "sampling.psi", "sampling.cutoff", "sampling.noise_mode"):
        out.setdefault(key, own[key].clone())
    return out


def _index(names: list[str], i: int, key: str) -> str:
    if i >= len(names):
        raise ModelLoadError(f"key {key!r} does not fit the architecture read from the other keys (index {i} of {len(names)})")
    return names[i]


def g_ema_of(ckpt: Any, source: str) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The `g_ema` state dict and `latent_avg` (or None) of a loaded rosinality checkpoint:
    {'g_ema', 'latent_avg'} (convert_weight.py), a train.py checkpoint ({'g', 'd', 'g_ema', 'args', ...},
    no latent_avg) or a bare g_ema state dict."""
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
    return sd, latent_avg


def stylegan2_from_rosinality(ckpt: Any, source: str) -> StyleGAN2Generator:
    """A StyleGAN2Generator from a loaded rosinality checkpoint (any layout of `g_ema_of`).

    Without latent_avg, w_avg is the mean of 4096 mapped latents from a fixed seed (deterministic).
    """
    sd, latent_avg = g_ema_of(ckpt, source)
    model = StyleGAN2Generator(**architecture_from_rosinality(sd))
    load_strict(model, state_dict_from_rosinality(sd, model, latent_avg), source, names=rosinality_names(model))
    if latent_avg is None:
        model.mapping.w_avg.copy_(model.estimate_w_avg())
    return model.eval()


def load_rosinality(spec: str | Path) -> tuple[StyleGAN2Generator, str, ModelOrigin]:
    """A StyleGAN2 from a rosinality `.pt` checkpoint, a description of its source and its origin. `spec`
    may end in sampling options: `PATH?truncation_psi=0.5`. Nothing in the file is executed."""
    path, options = split_sampling_options(spec)
    model = stylegan2_from_rosinality(read_torch_checkpoint(path), str(path))
    apply_sampling_options(model, options)
    return (model, f"rosinality StyleGAN2 checkpoint {path.resolve()} (g_ema)",
            ModelOrigin("rosinality", str(path.resolve()), options_text(options)))


# --- writing an edited model back ----------------------------------------------------------------

def write_rosinality(source: Path, model: StyleGAN2Generator, out: Path, also_g: bool = False) -> list[str]:
    """Write `model`'s weights into a copy of the rosinality checkpoint `source`, at `out` (atomically).

    The copy has the file's top-level layout (bare `g_ema`, convert_weight's or train.py's dict), key
    names and order, dtypes and serialization; `d`, the optimizers, `args`, the noise buffers and
    everything else are the file's own. Only the `g_ema` tensors (and `latent_avg`) whose values our
    model changed are replaced, in the file's shape and dtype; with `also_g`, train.py's `g` moves by the
    same change. Returns the changed keys (`g_ema.<key>`, `g.<key>`, `latent_avg`)."""
    ckpt = read_torch_checkpoint(source)
    sd, latent_avg = g_ema_of(ckpt, str(source))
    try:
        names = {key: rosinality_key(key, model) for key in sd}
    except KeyError as exc:
        raise ModelLoadError(f"{source}: g_ema key {exc} is not part of a rosinality StyleGAN2; was the file replaced "
                             "since the model was loaded?") from None
    ours = model.state_dict()
    changes = changed_tensors(sd, names, ours)
    changed = [f"g_ema.{key}" for key in changes]
    if sd is ckpt:
        result: Any = with_tensors(sd, changes)
    else:
        result = copy.copy(ckpt)
        result["g_ema"] = with_tensors(sd, changes)
        if latent_avg is not None and (avg := changed_tensors(ckpt, {"latent_avg": LATENT_AVG}, ours)):
            result.update(avg)
            changed.append("latent_avg")
    if also_g:
        g = ckpt.get("g") if sd is not ckpt else None
        if not isinstance(g, dict) or any(not isinstance(g.get(k), torch.Tensor) or g[k].shape != sd[k].shape for k in changes):
            raise ModelLoadError(f"--also-g: {source} holds no 'g' generator matching g_ema (only train.py checkpoints "
                                 "have one); export without --also-g")
        result["g"] = with_tensors(g, {k: moved_by(g[k], sd[k], new) for k, new in changes.items()})
        changed += [f"g.{key}" for key in changes]
    write_torch_checkpoint(result, out, like=source)
    return changed
