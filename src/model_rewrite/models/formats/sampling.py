"""The sampling options a StyleGAN2 model name may carry: `PATH?truncation_psi=0.5&noise_mode=const`, and
`noise=paper`, the fixed noise the original authors' StyleGAN2 wrapper added (docs/paper.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import ModelLoadError
from ..stylegan2 import StyleGAN2Generator

SAMPLING_OPTIONS = ("truncation_psi", "truncation_cutoff", "noise_mode", "noise")


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


def options_text(options: dict[str, str]) -> str:
    """The inverse of the split: {"truncation_psi": "0.5"} -> "truncation_psi=0.5" (what follows the `?`)."""
    return "&".join(f"{key}={value}" for key, value in options.items())


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
    if "noise" in options:
        if options["noise"] != "paper":
            raise ModelLoadError(f"bad model option noise={options['noise']!r}: the one choice is noise=paper (the "
                                 "authors' fixed noise); the checkpoint's own noise is noise_mode=const")
        use_paper_noise(model)


def use_paper_noise(model: StyleGAN2Generator) -> None:
    """Make the fixed noise (`noise_mode="const"`) the noise the authors' SeqStyleGAN2 added to one image: at
    every styled conv with an H x W output, the first H*W values of `numpy.random.RandomState(0).randn`
    (their `NoiseInjectionF`, which ignores the model's noise buffers). Sets `noise_mode` to "const"."""
    with torch.no_grad():
        for layer in model.conv_layers():
            res = layer.noise_const.shape[-1]
            layer.noise_const.copy_(torch.from_numpy(np.random.RandomState(0).randn(res * res).astype("float32")).view(res, res))
    model.noise_mode = "const"
