"""Helpers of the export tests: a structural comparison of two loaded checkpoints, and a cheap stand-in
for a solved edit. Nothing here comes from model_rewrite's export code.

Not a test module (no `test_` prefix); imported by test_export_formats.py and test_export_nvidia.py.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two loaded checkpoints differ: types, dict keys and their order, an OrderedDict's `_metadata`,
    tensor dtype, shape, stride, requires_grad and bytes (bit for bit), and plain values."""
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, torch.Tensor):
        same = (a.dtype, a.shape, a.stride(), a.requires_grad) == (b.dtype, b.shape, b.stride(), b.requires_grad) and \
            a.detach().contiguous().numpy().tobytes() == b.detach().contiguous().numpy().tobytes()
        return [] if same else [path]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)} != {list(b)}"]
        out = differences(getattr(a, "_metadata", None), getattr(b, "_metadata", None), f"{path}._metadata")
        for key in a:
            out += differences(a[key], b[key], f"{path}/{key}" if path else str(key))
        return out
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, argparse.Namespace):
        return differences(vars(a), vars(b), f"{path}.args")
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def random_delta(rw: Any, layer: str, seed: int = 0, scale: float = 0.5) -> Any:
    """A rank-1 LowRankDelta for `layer` of the Rewriter `rw`: what a solved edit pushes, without the solve."""
    from model_rewrite import LowRankDelta

    spec = rw.spec(layer)
    weight = rw.model.get_parameter(spec.param_path)
    g = torch.Generator().manual_seed(seed)
    shape = list(weight.shape)
    c_in = shape[spec.key_axis]
    shape[spec.key_axis] = 1
    dirs = torch.randn(1, c_in, generator=g)
    return LowRankDelta(spec.param_path, spec.key_axis, scale * torch.randn(*shape, generator=g), dirs / dirs.norm())
