"""StyleGAN2 (Karras et al. 2020) in pure PyTorch, with the modulated convolution split for rewriting,
and the loader of rosinality/stylegan2-pytorch checkpoints.

Written from the description in FORMATS.md (sections 1 and 4); no code is taken from either
implementation and no custom operators are needed, so it runs wherever PyTorch runs.

Module tree (names are the layer names used everywhere):

    mapping                 MappingNetwork: fc0..fc{n-1} (EqualLinear + lrelu), buffer w_avg (w_dim,)
    sampling                SamplingSettings: buffers psi, cutoff, noise_mode (so they enter the fingerprint)
    b4                      SynthesisBlock: const (C4, 4, 4), conv1, torgb
    b8, b16, ..., b{R}      SynthesisBlock: conv0 (2x up), conv1, torgb

Each `b{R}.conv{j}` is a StyledConv, an editable layer. Its plain weight lives on the submodule
`b{R}.conv{j}.conv` (a PlainConv), which receives the key `s * x` (the style-modulated input) and
returns the linear convolution (in up layers: transposed conv and blur, both linear, so its output
has the value's grid); demodulation (recomputed from that weight), noise, bias, lrelu and clamp form
the layer's tail f (METHOD.md section 8).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from ..layers import LayerSpec

NOISE_MODES = ("const", "random", "none")  # fixed per-layer noise, fresh randn per call, no noise
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMOD_EPS = 1e-8
W_AVG_SAMPLES = 4096  # latents averaged for w_avg when a checkpoint has no latent_avg
W_AVG_SEED = 0


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


# --- the generator ---------------------------------------------------------------------------

def rosinality_channels(resolution: int, channel_multiplier: int = 2) -> list[int]:
    """rosinality's fixed channel table for resolutions 4, 8, ..., `resolution`."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return [table[4 * 2**i] for i in range(_log2(resolution) - 1)]


def nvidia_channels(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> list[int]:
    """NVIDIA's channel rule min(channel_base // R, channel_max) for R = 4, 8, ..., `resolution`."""
    return [min(channel_base // (4 * 2**i), channel_max) for i in range(_log2(resolution) - 1)]


def _log2(resolution: int) -> int:
    if resolution < 4 or resolution & (resolution - 1):
        raise ModelLoadError(f"StyleGAN2 resolution must be a power of two >= 4, got {resolution}")
    return resolution.bit_length() - 1


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator (config-e/f 'skip' architecture, unconditional), pure PyTorch.

    Arguments: `resolution` R; `channels`, the widths at 4, 8, ..., R (default: rosinality's table
    with channel multiplier 2); `z_dim`, `w_dim` (default z_dim); `n_mlp` mapping layers of width
    `mapping_features` (default w_dim) and learning-rate multiplier `lr_mlp`; the blur filter taps;
    `conv_clamp` (NVIDIA ADA's activation clamp, None for rosinality/TF files); and the sampling
    settings `truncation_psi`, `truncation_cutoff` (None: every layer) and `noise_mode`
    ("const": the fixed noise buffers, the default; "random": fresh noise from torch's global RNG on
    every call, not reproducible; "none"). The sampling settings are also attributes and are stored
    in buffers, so they are part of the fingerprint.

    forward(z (B, z_dim)) -> images (B, 3, R, R), nominally in [-1, 1] (not clamped). Also
    forward(w=...) with w (B, w_dim) or W+ (B, num_ws, w_dim), used as given (no truncation), and
    `noise=[...]`: one (1 or B, 1, H, W) tensor per conv layer (None entries use `noise_mode`).
    """

    def __init__(self, resolution: int = 256, channels: Sequence[int] | None = None, z_dim: int = 512,
                 w_dim: int | None = None, n_mlp: int = 8, mapping_features: int | None = None,
                 lr_mlp: float = 0.01, blur_kernel: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 truncation_psi: float = 1.0, truncation_cutoff: int | None = None, noise_mode: str = "const") -> None:
        super().__init__()
        log_size = _log2(resolution)
        if resolution < 8:
            raise ModelLoadError(f"StyleGAN2 resolution must be at least 8, got {resolution}")
        channels = list(channels) if channels is not None else rosinality_channels(resolution, 2)
        if len(channels) != log_size - 1 or any(int(c) < 1 for c in channels):
            raise ModelLoadError(f"channels must list {log_size - 1} positive widths (for 4..{resolution} px), got {channels}")
        self.resolution = resolution
        self.channels = [int(c) for c in channels]
        self.z_dim = int(z_dim)
        self.w_dim = int(w_dim if w_dim is not None else z_dim)
        self.n_mlp = int(n_mlp)
        self.mapping_features = int(mapping_features if mapping_features is not None else self.w_dim)
        self.lr_mlp = float(lr_mlp)
        self.blur_kernel = [float(t) for t in blur_kernel]
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.num_ws = 2 * log_size - 2
        self.num_conv_layers = 2 * (log_size - 2) + 1
        self.latent_shape: tuple[int, ...] = (self.z_dim,)

        taps = fir_taps(self.blur_kernel)
        self.mapping = MappingNetwork(self.z_dim, self.w_dim, self.n_mlp, self.mapping_features, self.lr_mlp)
        self.sampling = SamplingSettings(1.0, 0, 0)
        self.block_names = [f"b{4 * 2**i}" for i in range(log_size - 1)]
        for i, name in enumerate(self.block_names):
            in_ch = 0 if i == 0 else self.channels[i - 1]
            self.add_module(name, SynthesisBlock(in_ch, self.channels[i], 4 * 2**i, self.w_dim, taps, self.conv_clamp))
        self.truncation_psi = truncation_psi
        self.truncation_cutoff = truncation_cutoff
        self.noise_mode = noise_mode

    # --- sampling settings (stored in buffers) ----------------------------------------------
    @property
    def truncation_psi(self) -> float:
        """Truncation psi: w' = w_avg + psi (w - w_avg); 1.0 is no truncation."""
        return float(self.sampling.psi)

    @truncation_psi.setter
    def truncation_psi(self, psi: float) -> None:
        if not math.isfinite(float(psi)):
            raise ValueError(f"truncation_psi must be a finite number, got {psi}")
        self.sampling.psi.fill_(float(psi))

    @property
    def truncation_cutoff(self) -> int | None:
        """Truncate only the first `cutoff` ws (NVIDIA's truncation_cutoff); None: all of them."""
        cutoff = int(self.sampling.cutoff)
        return cutoff or None

    @truncation_cutoff.setter
    def truncation_cutoff(self, cutoff: int | None) -> None:
        if cutoff is not None and not 1 <= int(cutoff) <= self.num_ws:
            raise ValueError(f"truncation_cutoff must be None or 1..{self.num_ws}, got {cutoff}")
        self.sampling.cutoff.fill_(int(cutoff or 0))

    @property
    def noise_mode(self) -> str:
        """Noise used when none is passed: "const" (fixed buffers), "random" or "none"."""
        return NOISE_MODES[int(self.sampling.noise_mode)]

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        self.sampling.noise_mode.fill_(NOISE_MODES.index(mode))

    # --- forward ----------------------------------------------------------------------------
    def forward(self, z: torch.Tensor | None = None, *, w: torch.Tensor | None = None,
                noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) from latents z (B, z_dim), or from w / W+ latents given as `w`."""
        if (z is None) == (w is None):
            raise ValueError("give either z (B, z_dim) or w=(B, w_dim) / (B, num_ws, w_dim)")
        ws = self.ws_from_z(z) if z is not None else self.ws_from_w(w)  # type: ignore[arg-type]
        return self.synthesize(ws, noise)

    def ws_from_z(self, z: torch.Tensor, truncation_psi: float | None = None) -> torch.Tensor:
        """Mapped, truncated W+ latents (B, num_ws, w_dim) of z (B, z_dim) (or (B, z_dim, 1, 1))."""
        z = z.reshape(z.shape[0], -1)
        if z.shape[1] != self.z_dim:
            raise ValueError(f"z must have {self.z_dim} values per sample, got shape {tuple(z.shape)}")
        w = self.mapping(z)  # (B, w_dim)
        ws = w[:, None, :].repeat(1, self.num_ws, 1)  # (B, num_ws, w_dim)
        psi = self.truncation_psi if truncation_psi is None else float(truncation_psi)
        if psi != 1.0:
            cut = self.truncation_cutoff or self.num_ws
            ws[:, :cut] = self.mapping.w_avg.lerp(ws[:, :cut], psi)
        return ws

    def ws_from_w(self, w: torch.Tensor) -> torch.Tensor:
        """W+ latents (B, num_ws, w_dim) from w (B, w_dim) (broadcast) or W+ (B, num_ws, w_dim) (as is)."""
        if w.dim() == 2 and w.shape[1] == self.w_dim:
            return w[:, None, :].expand(-1, self.num_ws, -1)
        if w.dim() == 3 and tuple(w.shape[1:]) == (self.num_ws, self.w_dim):
            return w
        raise ValueError(f"w must be (B, {self.w_dim}) or (B, {self.num_ws}, {self.w_dim}), got {tuple(w.shape)}")

    def synthesize(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) from W+ latents (B, num_ws, w_dim). Layer i of block b{R} reads ws[:, 2k + i]
        for the k-th block after b4 (b4: conv1 <- 0, torgb <- 1); torgb shares the next conv0's index."""
        noises = self._noises(noise, ws.shape[0], ws.device, ws.dtype)
        x: torch.Tensor | None = None
        img: torch.Tensor | None = None
        w_idx = n_idx = 0
        for name in self.block_names:
            block: SynthesisBlock = getattr(self, name)
            n = block.num_conv
            x, img = block(x, img, ws[:, w_idx : w_idx + n + 1], noises[n_idx : n_idx + n])
            w_idx += n
            n_idx += n
        assert img is not None
        return img.contiguous()

    def conv_layers(self) -> list[StyledConv]:
        """The StyledConvs in forward (and noise) order: b4.conv1, b8.conv0, b8.conv1, ..."""
        return [getattr(getattr(self, name), conv) for name, conv in self._conv_names()]

    def _conv_names(self) -> list[tuple[str, str]]:
        return [(name, conv) for i, name in enumerate(self.block_names) for conv in (("conv1",) if i == 0 else ("conv0", "conv1"))]

    def _noises(self, noise: Sequence[torch.Tensor | None] | None, batch: int, device: torch.device,
                dtype: torch.dtype) -> list[torch.Tensor | None]:
        layers = self.conv_layers()
        given = list(noise) if noise is not None else [None] * len(layers)
        if len(given) != len(layers):
            raise ValueError(f"noise must list {len(layers)} tensors (one per conv layer), got {len(given)}")
        mode = self.noise_mode
        out: list[torch.Tensor | None] = []
        for layer, n in zip(layers, given):
            if n is None and mode == "const":
                n = layer.noise_const[None, None]
            elif n is None and mode == "random":
                n = torch.randn(batch, 1, layer.resolution, layer.resolution, device=device, dtype=dtype)
            out.append(n)
        return out

    # --- what the rest of the package asks of a generator -----------------------------------
    def editable_layers(self) -> list[LayerSpec]:
        """Every StyledConv; the key is s * x (the input of `<layer>.conv`), the value the layer output."""
        return [LayerSpec(name=f"{b}.{c}", weight_module=f"{b}.{c}.conv", key_axis=1) for b, c in self._conv_names()]

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready), stored in exported files so they can be rebuilt.
        The sampling settings are buffers and travel with the weights."""
        return {"kind": "stylegan2", "resolution": self.resolution, "channels": list(self.channels),
                "z_dim": self.z_dim, "w_dim": self.w_dim, "n_mlp": self.n_mlp,
                "mapping_features": self.mapping_features, "lr_mlp": self.lr_mlp,
                "blur_kernel": list(self.blur_kernel), "conv_clamp": self.conv_clamp}

    @torch.no_grad()
    def estimate_w_avg(self, num_samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED, batch_size: int = 512) -> torch.Tensor:
        """Mean of mapping(z) over a seeded stream of `num_samples` latents: (w_dim,) float32.
        Deterministic (unlike rosinality's `mean_latent`, which draws fresh z)."""
        from ..latents import latent_stream

        device = self.mapping.w_avg.device
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=device)
        for z in latent_stream(seed, num_samples, (self.z_dim,), batch_size):
            total += self.mapping(z.to(device)).to(torch.float64).sum(0)
        return (total / num_samples).to(torch.float32)


# --- rosinality checkpoints ------------------------------------------------------------------

def read_torch_checkpoint(path: Path) -> Any:
    """torch.load with weights_only=True (argparse.Namespace allowed, for train.py's `args`)."""
    if not path.is_file():
        raise ModelLoadError(f"no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for bad or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot read {path} as a torch checkpoint with weights_only=True ({first}); the file may be "
            "truncated, not a checkpoint, or hold objects other than tensors (only plain state dicts are read)"
        ) from None


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
    convs = [f"{b}.{c}" for b, c in model._conv_names()]  # conv index j of rosinality = convs[j + 1]
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
    from . import _load_strict

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
    _load_strict(model, state_dict_from_rosinality(sd, model, latent_avg), source)
    if latent_avg is None:
        model.mapping.w_avg.copy_(model.estimate_w_avg())
    return model.eval()


SAMPLING_OPTIONS = ("truncation_psi", "truncation_cutoff", "noise_mode")


def split_sampling_options(spec: str | Path) -> tuple[Path, dict[str, str]]:
    """`PATH?truncation_psi=0.5&noise_mode=const` -> (PATH, {"truncation_psi": "0.5", ...}).

    The options are the model's sampling settings (SAMPLING_OPTIONS); a PATH that exists as given is
    never split."""
    text = str(spec)
    if "?" not in text or Path(text).exists():
        return Path(text), {}
    path, _, query = text.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in SAMPLING_OPTIONS or not eq:
            raise ModelLoadError(f"unknown model option {item!r} in {text!r}; use PATH?name=value&... with names "
                                 f"{list(SAMPLING_OPTIONS)}")
        options[key] = value
    return Path(path), options


def apply_sampling_options(model: StyleGAN2Generator, options: dict[str, str]) -> None:
    """Set the sampling settings named in `options` (string values, as parsed from a model name)."""
    try:
        if "truncation_psi" in options:
            model.truncation_psi = float(options["truncation_psi"])
        if "truncation_cutoff" in options:
            cutoff = options["truncation_cutoff"]
            model.truncation_cutoff = None if cutoff.lower() in ("", "none") else int(cutoff)
        if "noise_mode" in options:
            model.noise_mode = options["noise_mode"]
    except ValueError as exc:
        raise ModelLoadError(f"bad model option: {exc}") from None


def load_stylegan2(spec: str | Path) -> tuple[StyleGAN2Generator, str]:
    """A StyleGAN2 from a rosinality `.pt` checkpoint or (for `.pkl`) an NVIDIA network pickle, and a
    description of its source. `spec` may end in sampling options: `PATH?truncation_psi=0.5`.
    Nothing in either file is executed."""
    path, options = split_sampling_options(spec)
    if path.suffix == ".pkl":
        from .nvidia_pickle import load_nvidia_pickle

        model, source = load_nvidia_pickle(path)
    else:
        model = stylegan2_from_rosinality(read_torch_checkpoint(path), str(path))
        source = f"rosinality StyleGAN2 checkpoint {path.resolve()} (g_ema)"
    apply_sampling_options(model, options)
    return model, source
