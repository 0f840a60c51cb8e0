"""The layers of our StyleGAN2 (models/stylegan2.py): FIR filtering, equalized-lr linear layers, the
mapping network, the modulated convolution split into a plain convolution and its tail, ToRGB, and the
per-resolution synthesis block.

Written from the description in FORMATS.md (sections 1 and 4); plain PyTorch operations only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError

NOISE_MODES = ("const", "random", "none")  # fixed per-layer noise, fresh randn per call, no noise
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMOD_EPS = 1e-8


# --- FIR filtering ---------------------------------------------------------------------------

def fir_taps(taps: Sequence[float]) -> torch.Tensor:
    """A 1-D FIR filter normalised so that the 2-D filter outer(t, t) sums to one. (K,) float32."""
    t = torch.as_tensor(list(taps), dtype=torch.float32)
    if t.dim() != 1 or t.numel() < 1 or float(t.sum()) == 0.0:
        raise ModelLoadError(f"blur_kernel must be a non-empty list of taps with a non-zero sum, got {list(taps)}")
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, taps: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, zero-pad, then convolve with the separable filter outer(taps, taps) * gain.

    x: (B, C, H, W); taps: (K,) -> (B, C, H*up + pad0 + pad1 - K + 1, same for W). The filter is
    flipped (a true convolution), as in StyleGAN's upfirdn2d; `up - 1` zeros follow each pixel.
    One depthwise convolution (faster on CPU than two 1-D passes over B*C single-channel maps).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    k = taps.flip(0).to(x.dtype)
    kernel = (torch.outer(k, k) * gain)[None, None].expand(c, 1, k.numel(), k.numel())  # (C, 1, K, K)
    return F.conv2d(x, kernel, groups=c)


# --- layers ----------------------------------------------------------------------------------

class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: y = x (W lr_mul/sqrt(in))^T + b lr_mul [then lrelu * sqrt 2].

    The stored weight and bias are the unscaled ones (FORMATS.md 1.4). x: (B, in) -> (B, out).
    """

    def __init__(self, in_features: int, out_features: int, lr_mul: float = 1.0, bias_init: float = 0.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.lr_mul = float(lr_mul)
        self.scale = self.lr_mul / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(y, LRELU_SLOPE) * LRELU_GAIN if self.activate else y


class MappingNetwork(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): pixel norm, then `num_layers` EqualLinear + lrelu layers.

    Buffer `w_avg` (w_dim,) is the truncation centre (rosinality `latent_avg`, NVIDIA `mapping.w_avg`).
    """

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, hidden: int, lr_mul: float) -> None:
        super().__init__()
        if num_layers < 1:
            raise ModelLoadError(f"the mapping network needs at least one layer, got {num_layers}")
        features = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"fc{i}", EqualLinear(features[i], features[i + 1], lr_mul, activate=True))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # (B, z_dim)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x  # (B, w_dim)


class PlainConv(nn.Module):
    """The plain (unmodulated) convolution of a StyleGAN2 layer: the memory W that is rewritten.

    weight: (C_out, C_in, k, k), stored unscaled (the runtime scale is 1/sqrt(C_in k k)); its key axis
    is 1. Input: keys (B, C_in, H, W), the style-modulated features. Output, linear in the weight:
    conv(keys) (B, C_out, H, W), or for `up` the stride-2 transposed conv followed by the blur filter
    (B, C_out, 2H, 2W). The blur is linear and per channel, so it belongs here: the linear output then
    has the grid of the layer's value. Demodulation, noise, bias and activation follow in StyledConv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, up: bool = False,
                 taps: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.up = up
        self.padding = kernel_size // 2
        if up:
            if taps is None:
                raise ValueError("an upsampling PlainConv needs the blur taps")
            self.register_buffer("taps", taps.clone(), persistent=False)
            p = taps.numel() - 2 - (kernel_size - 1)
            self.blur_pad = ((p + 1) // 2 + 1, p // 2 + 1)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        if self.up:  # the weight is used unflipped, as (C_in, C_out, k, k) (FORMATS.md 1.5); 2H+1 -> blur -> 2H
            y = F.conv_transpose2d(keys, w.transpose(0, 1), stride=2)
            return upfirdn2d(y, self.taps, pad=self.blur_pad, gain=4.0)
        return F.conv2d(keys, w, padding=self.padding)


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Demodulation coefficients rsqrt(sum_{i,kh,kw} (weight[o,i] * styles[b,i])^2 + 1e-8).

    weight: (C_out, C_in, kh, kw), already scaled; styles: (B, C_in) -> (B, C_out).
    """
    energy = weight.square().sum(dim=(2, 3))  # (C_out, C_in)
    return torch.rsqrt(styles.square() @ energy.T + DEMOD_EPS)


class StyledConv(nn.Module):
    """One StyleGAN2 layer, split for rewriting: value = f(W (s * x)).

    forward(x (B, C_in, H, W), w (B, w_dim), noise (1 or B, 1, H', W') or None) -> (B, C_out, H', W')
    with H' = 2H when `up`. Styles s = affine(w); the submodule `conv` (PlainConv) receives the key
    s * x (and blurs, in up layers); then demodulation computed from `conv.weight` (so an overridden weight is
    demodulated too), + noise_strength * noise, lrelu(. + bias) * sqrt(2), [clamp to +-conv_clamp].
    With no edit this equals the fused modulated convolution up to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool,
                 taps: torch.Tensor, conv_clamp: float | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.conv = PlainConv(in_channels, out_channels, kernel_size, up, taps)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))  # the fixed noise
        self.up = up
        self.resolution = resolution
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)  # (B, C_in)
        # keys in channels-last memory: convolutions are faster on CPU and the keys read as (N, C_in) rows without a copy
        keys = (x * styles[:, :, None, None]).contiguous(memory_format=torch.channels_last)
        y = self.conv(keys)  # (B, C_out, H', W'), linear in conv.weight
        y = y * demodulation(self.conv.weight * self.conv.scale, styles)[:, :, None, None]
        if noise is not None:
            y = y + self.noise_strength * noise
        y = F.leaky_relu(y + self.bias[None, :, None, None], LRELU_SLOPE) * LRELU_GAIN
        if self.conv_clamp is not None:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        return y


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, + bias [clamped], + the upsampled skip image.

    forward(x (B, C, H, W), w (B, w_dim), skip (B, 3, H/2, W/2) or None) -> (B, 3, H, W).
    """

    def __init__(self, in_channels: int, w_dim: int, taps: torch.Tensor, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.register_buffer("taps", taps.clone(), persistent=False)
        self.scale = 1.0 / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp
        p = taps.numel() - 2
        self.up_pad = ((p + 1) // 2 + 1, p // 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)  # (B, C)
        y = F.conv2d(x * styles[:, :, None, None], self.weight * self.scale) + self.bias[None, :, None, None]
        if self.conv_clamp is not None:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            y = y + upfirdn2d(skip, self.taps, up=2, pad=self.up_pad, gain=4.0)
        return y


class SynthesisBlock(nn.Module):
    """The layers of one resolution R: `const` (R = 4) or `conv0` (2x up), then `conv1` and `torgb`.

    forward(x (B, C_in, R/2, R/2) or None, img (B, 3, R/2, R/2) or None, ws (B, num_conv + 1, w_dim),
    noises: one entry per conv) -> (x (B, C, R, R), img (B, 3, R, R)).
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: int, w_dim: int, taps: torch.Tensor,
                 conv_clamp: float | None) -> None:
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.num_conv = 1
        else:
            self.conv0 = StyledConv(in_channels, out_channels, w_dim, resolution, True, taps, conv_clamp)
            self.num_conv = 2
        self.conv1 = StyledConv(out_channels, out_channels, w_dim, resolution, False, taps, conv_clamp)
        self.torgb = ToRGB(out_channels, w_dim, taps, conv_clamp)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noises: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_conv == 1:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noises[0])
        else:
            x = self.conv0(x, ws[:, 0], noises[0])
            x = self.conv1(x, ws[:, 1], noises[1])
        return x, self.torgb(x, ws[:, self.num_conv], img)


class SamplingSettings(nn.Module):
    """Truncation and noise settings kept as buffers, so that they are part of the state dict, the
    model fingerprint (and so of statistics cache keys and edit checks) and exported files."""

    def __init__(self, psi: float, cutoff: int, noise_mode: int) -> None:
        super().__init__()
        self.register_buffer("psi", torch.tensor(float(psi), dtype=torch.float64))  # float64: psi reads back exactly
        self.register_buffer("cutoff", torch.tensor(int(cutoff)))  # 0 = every layer
        self.register_buffer("noise_mode", torch.tensor(int(noise_mode)))  # index into NOISE_MODES
