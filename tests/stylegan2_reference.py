"""Test fixtures for StyleGAN2: a rosinality-layout state dict with random weights, and an independent
reference forward pass written from FORMATS.md sections 1.3-1.6 and 4.4 (fused, grouped modulated
convolutions as in the formats' description; nothing imported from model_rewrite).

Not a test module (no `test_` prefix); imported by test_stylegan2.py and test_nvidia_pickle.py.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F


def rosinality_state_dict(size: int = 32, style_dim: int = 32, n_mlp: int = 2, channels: dict[int, int] | None = None,
                          seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A rosinality `g_ema` state dict (FORMATS.md 1.3 key names and shapes) and a 1-D latent_avg.

    Random weights with non-trivial biases (mapping, modulation, activation, RGB), noise strengths and
    noise buffers. `channels` maps resolution -> width (any widths, not only rosinality's table).
    """
    g = torch.Generator().manual_seed(seed)
    rn = lambda *shape: torch.randn(*shape, generator=g)
    log_size = int(math.log2(size))
    ch = channels or {4: 32, 8: 32, 16: 24, 32: 16, 64: 16, 128: 8}
    d = style_dim
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = rn(d, d) * 100.0  # stored = effective / lr_mul (0.01)
        sd[f"style.{i}.bias"] = rn(d) * 20.0  # effective bias ~ 0.2

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = rn(1, cout, cin, 3, 3)
        if up:
            k = torch.tensor([1.0, 3.0, 3.0, 1.0])
            sd[f"{prefix}.conv.blur.kernel"] = torch.outer(k, k) / 64 * 4
        sd[f"{prefix}.conv.modulation.weight"] = rn(cin, d)
        sd[f"{prefix}.conv.modulation.bias"] = 1.0 + 0.3 * rn(cin)
        sd[f"{prefix}.noise.weight"] = 0.2 + 0.2 * rn(1).abs()
        sd[f"{prefix}.activate.bias"] = 0.3 * rn(cout)

    def rgb(prefix: str, cin: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = rn(1, 3, cin, 1, 1)
        sd[f"{prefix}.conv.modulation.weight"] = rn(cin, d)
        sd[f"{prefix}.conv.modulation.bias"] = 1.0 + 0.3 * rn(cin)
        sd[f"{prefix}.bias"] = 0.2 * rn(1, 3, 1, 1)
        if up:
            k = torch.tensor([1.0, 3.0, 3.0, 1.0])
            sd[f"{prefix}.upsample.kernel"] = torch.outer(k, k) / 64 * 4

    sd["input.input"] = rn(1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    rgb("to_rgb1", ch[4], False)
    for k in range(log_size - 2):
        r = 2 ** (k + 3)
        styled(f"convs.{2 * k}", ch[r // 2], ch[r], True)
        styled(f"convs.{2 * k + 1}", ch[r], ch[r], False)
        rgb(f"to_rgbs.{k}", ch[r], True)
    for i in range(2 * (log_size - 2) + 1):
        res = 2 ** ((i + 5) // 2)
        sd[f"noises.noise_{i}"] = rn(1, 1, res, res)
    latent_avg = 0.5 * rn(d)
    return sd, latent_avg


def upfirdn(x: torch.Tensor, kernel: torch.Tensor, up: int, pad: tuple[int, int]) -> torch.Tensor:
    """FORMATS.md 1.5: insert up-1 zeros after each pixel, zero-pad, convolve with the (flipped) 2-D kernel."""
    b, c, h, w = x.shape
    if up > 1:
        z = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    k = kernel.flip(0, 1)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def equal_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lr_mul: float, act: bool) -> torch.Tensor:
    out = x @ (weight * lr_mul / math.sqrt(weight.shape[1])).T + bias * lr_mul
    return F.leaky_relu(out, 0.2) * math.sqrt(2) if act else out


def modulated_conv(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, w: torch.Tensor, demod: bool, up: bool,
                   nvidia: bool = False) -> torch.Tensor:
    """rosinality's fused ModulatedConv2d (grouped conv over the batch). With `nvidia`, NVIDIA's variant
    (FORMATS.md 4.4): raw weight in the demodulation, 1/sqrt(C_in) on the styles of the RGB layer."""
    weight = sd[f"{prefix}.conv.weight"][0]  # (C_out, C_in, k, k)
    b, cin, h, wd = x.shape
    cout, _, k, _ = weight.shape
    s = equal_linear(w, sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"], 1.0, False)
    if nvidia:
        if not demod:
            s = s / math.sqrt(cin)
        wb = weight[None] * s[:, None, :, None, None]
    else:
        wb = weight[None] / math.sqrt(cin * k * k) * s[:, None, :, None, None]  # (B, C_out, C_in, k, k)
    if demod:
        wb = wb * torch.rsqrt(wb.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
    if up:
        wt = wb.transpose(1, 2).reshape(b * cin, cout, k, k)
        out = F.conv_transpose2d(x.reshape(1, b * cin, h, wd), wt, stride=2, groups=b)
        out = out.reshape(b, cout, out.shape[2], out.shape[3])
        kern = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64 * 4
        return upfirdn(out, kern, 1, (1, 1))
    out = F.conv2d(x.reshape(1, b * cin, h, wd), wb.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
    return out.reshape(b, cout, h, wd)


def reference_forward(sd: dict[str, torch.Tensor], latent_avg: torch.Tensor | None, *, z: torch.Tensor | None = None,
                      wplus: torch.Tensor | None = None, truncation: float = 1.0, noise: list[torch.Tensor] | None = None,
                      conv_clamp: float | None = None, nvidia: bool = False) -> torch.Tensor:
    """rosinality's Generator forward (FORMATS.md 1.5) on a g_ema state dict: z (B, D) through the mapping
    and truncation (applied to every layer), or W+ latents (B, n_latent, D) used as given; `noise` None
    means randomize_noise=False (the noises.noise_i buffers). `conv_clamp` adds NVIDIA's clamp."""
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    log_size = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)]) // 2 + 2
    n_latent = 2 * log_size - 2
    if wplus is None:
        assert z is not None
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for i in range(1, n_mlp + 1):
            x = equal_linear(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], 0.01, True)
        if truncation < 1:
            x = latent_avg + truncation * (x - latent_avg)
        latent = x[:, None, :].repeat(1, n_latent, 1)
    else:
        latent = wplus
    if noise is None:
        noise = [sd[f"noises.noise_{i}"] for i in range(2 * (log_size - 2) + 1)]

    def styled(prefix: str, x: torch.Tensor, w: torch.Tensor, n: torch.Tensor, up: bool) -> torch.Tensor:
        out = modulated_conv(sd, prefix, x, w, True, up, nvidia)
        out = out + sd[f"{prefix}.noise.weight"] * n
        out = F.leaky_relu(out + sd[f"{prefix}.activate.bias"][None, :, None, None], 0.2) * math.sqrt(2)
        return out.clamp(-conv_clamp, conv_clamp) if conv_clamp is not None else out

    def to_rgb(prefix: str, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = modulated_conv(sd, prefix, x, w, False, False, nvidia) + sd[f"{prefix}.bias"]
        if conv_clamp is not None:
            out = out.clamp(-conv_clamp, conv_clamp)
        if skip is not None:
            kern = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64 * 4
            out = out + upfirdn(skip, kern, 2, (2, 1))
        return out

    b = latent.shape[0]
    x = sd["input.input"].repeat(b, 1, 1, 1)
    x = styled("conv1", x, latent[:, 0], noise[0], False)
    img = to_rgb("to_rgb1", x, latent[:, 1], None)
    for k in range(log_size - 2):
        x = styled(f"convs.{2 * k}", x, latent[:, 2 * k + 1], noise[2 * k + 1], True)
        x = styled(f"convs.{2 * k + 1}", x, latent[:, 2 * k + 2], noise[2 * k + 2], False)
        img = to_rgb(f"to_rgbs.{k}", x, latent[:, 2 * k + 3], img)
    return img


def nvidia_state_dict(sd: dict[str, torch.Tensor], latent_avg: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same generator under NVIDIA `G_ema.state_dict()` names and shapes (FORMATS.md 4.3 and 4.5)."""
    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    log_size = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)]) // 2 + 2
    k4 = torch.tensor([1.0, 3, 3, 1])
    filt = torch.outer(k4, k4) / 64
    out: dict[str, torch.Tensor] = {}

    def layer(dst: str, src: str, noise_index: int, up: bool) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0].clone()
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape(())
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        out[f"{dst}.resample_filter"] = filt.clone()
        out[f"{dst}.noise_const"] = sd[f"noises.noise_{noise_index}"][0, 0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]

    def torgb(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0].clone()
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(3)
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]

    out["synthesis.b4.const"] = sd["input.input"][0]
    out["synthesis.b4.resample_filter"] = filt.clone()
    layer("synthesis.b4.conv1", "conv1", 0, False)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k in range(log_size - 2):
        r = 2 ** (k + 3)
        out[f"synthesis.b{r}.resample_filter"] = filt.clone()
        layer(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1, True)
        layer(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, False)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}")
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    out["mapping.w_avg"] = latent_avg.clone()
    return out
