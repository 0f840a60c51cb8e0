"""The StyleGAN2 generator (Karras et al. 2020) in pure PyTorch, with the modulated convolution split for
rewriting. Networks only: checkpoints are read by models/formats/rosinality.py and models/formats/nvidia.py.

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

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..layers import LayerSpec
from .stylegan2_layers import (
    NOISE_MODES,
    EqualLinear,
    MappingNetwork,
    PlainConv,
    SamplingSettings,
    StyledConv,
    SynthesisBlock,
    ToRGB,
    demodulation,
    fir_taps,
    upfirdn2d,
)

__all__ = ["NOISE_MODES", "W_AVG_SAMPLES", "W_AVG_SEED", "EqualLinear", "MappingNetwork", "PlainConv", "SamplingSettings",
           "StyleGAN2Generator", "StyledConv", "SynthesisBlock", "ToRGB", "demodulation", "fir_taps", "nvidia_channels",
           "rosinality_channels", "upfirdn2d"]

W_AVG_SAMPLES = 4096  # latents averaged for w_avg when a checkpoint has no latent_avg
W_AVG_SEED = 0


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
        return [getattr(getattr(self, name), conv) for name, conv in self.conv_names()]

    def conv_names(self) -> list[tuple[str, str]]:
        """(block, conv) names of the StyledConvs in forward order: ("b4", "conv1"), ("b8", "conv0"), ..."""
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
        return [LayerSpec(name=f"{b}.{c}", weight_module=f"{b}.{c}.conv", key_axis=1) for b, c in self.conv_names()]

    def layer_aliases(self) -> dict[str, str]:
        """The original authors' layer names (their SeqStyleGAN2 numbering) -> ours: `layer2` is the 4x4 conv
        (rosinality `conv1`, our `b4.conv1`), then one number per styled conv in forward order (rosinality
        `convs.N` is `layer{N+3}`: `layer3` = `b8.conv0`, `layer8` = `b32.conv1`, `layer10` = `b64.conv1`)."""
        return {f"layer{i + 2}": f"{b}.{c}" for i, (b, c) in enumerate(self.conv_names())}

    def why_not_editable(self, name: str) -> str | None:
        """Why `name` is no editable layer, where that needs more than the list of names: `layer1`."""
        if name == "layer1":
            return ("layer1 is not editable: in the authors' StyleGAN2 numbering it is the constant 4x4 input, which "
                    "has no weight to rewrite; the first editable layer is layer2 (b4.conv1)")
        return None

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
