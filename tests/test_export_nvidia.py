"""`export --format same` for NVIDIA StyleGAN2-ADA network pickles: the written pickle has the input's
structure (the same opcodes, global names and memo references; only storage bytes differ), a plain
unpickler with stand-in classes reads it, in a fresh interpreter, into the input's structure with the
edited G_ema tensor, and nothing from the file is imported or executed while writing.

The pickles are built with test_nvidia_pickle's stand-ins in NVIDIA's layout (FORMATS.md 4.1-4.3), with a
`G` distinct from `G_ema`, a Discriminator, an AugmentPipe, EasyDict init kwargs and numpy scalars, one of
them under numpy 1's global name `numpy.core.multiarray.scalar` (every 2021 NVIDIA file uses it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import pickletools
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from export_checks import random_delta
from stylegan2_reference import nvidia_state_dict, reference_forward, rosinality_state_dict
from test_nvidia_pickle import EasyDict, generator_records, module, nvidia_names  # noqa: F401 (a fixture)

from model_rewrite import Rewriter
from model_rewrite.export import export_edited
from model_rewrite.models import load_generator
from model_rewrite.models.formats.nvidia import read_network_pickle, state_dict_from_record

TOL = {"rtol": 1e-4, "atol": 1e-4}
EDITED = ["G_ema", "_modules", "synthesis", "_modules", "b16", "_modules", "conv1", "_parameters", "weight"]

# Run in a fresh interpreter: a plain pickle.load with stand-ins for NVIDIA's modules (no restriction),
# printing a description of everything read (records, dicts with their classes, tensors by bytes).
FRESH = r'''
import hashlib, json, pickle, sys, types
import numpy as np, torch

class Persistent:
    def __init__(self, meta):
        self.meta = meta

def _reconstruct_persistent_obj(meta):
    return Persistent(meta)

mods = {n: types.ModuleType(n) for n in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
mods["dnnlib.util"].EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
mods["dnnlib"].EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib"})
sys.modules.update(mods)
sources = set()

def describe(x):
    if isinstance(x, Persistent):
        m = x.meta
        sources.add(id(m["module_src"]))
        return {"persistent": [list(m), m["type"], m["version"], m["class_name"],
                               hashlib.sha256(m["module_src"].encode()).hexdigest(), describe(m["state"])]}
    if isinstance(x, torch.Tensor):
        return {"tensor": [type(x).__name__, str(x.dtype), list(x.shape), list(x.stride()), x.storage_offset(),
                           x.requires_grad, hashlib.sha256(x.detach().contiguous().numpy().tobytes()).hexdigest()]}
    if isinstance(x, np.generic):
        return {"numpy": [type(x).__name__, x.dtype.str, repr(x.item())]}
    if isinstance(x, dict):
        return {"dict": [type(x).__module__ + "." + type(x).__qualname__, [[describe(k), describe(v)] for k, v in x.items()]]}
    if isinstance(x, (set, frozenset)):
        return {type(x).__name__: sorted(map(repr, x))}
    if isinstance(x, (list, tuple)):
        return {type(x).__name__: [describe(v) for v in x]}
    if isinstance(x, (str, int, float, bool, type(None))):
        return {type(x).__name__: repr(x)}
    raise TypeError(type(x))

out = {}
for path in sys.argv[1:]:
    sources.clear()
    with open(path, "rb") as f:
        data = pickle.load(f)
    out[path] = {"data": describe(data), "module_sources": len(sources)}
print(json.dumps(out))
'''


def fresh_descriptions(*paths: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", FRESH, *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    return [found[str(p)] for p in paths]


def tensor_description(t: torch.Tensor, parameter: bool = True) -> dict:
    return {"tensor": ["Parameter" if parameter else "Tensor", str(t.dtype), list(t.shape), list(t.stride()), 0, False,
                       hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()]}


def at(desc: dict, path: list[str]) -> dict:
    """The description below `path`: dict keys, stepping into records' states."""
    for name in path:
        if "persistent" in desc:
            desc = desc["persistent"][5]
        desc = next(v for k, v in desc["dict"][1] if k == {"str": repr(name)})
    return desc


def replaced_at(desc: dict, path: list[str], new: dict) -> dict:
    out = copy.deepcopy(desc)
    parent = at(out, path[:-1])
    parent = parent["persistent"][5] if "persistent" in parent else parent
    parent["dict"][1] = [[k, new if k == {"str": repr(path[-1])} else v] for k, v in parent["dict"][1]]
    return out


def opcodes(path: Path) -> list[tuple[str, Any]]:
    """The pickle's opcodes and arguments (global names, objects and their memo references) in order.

    Normalised for what carries no meaning: storage blobs by length only (torch keys storages by memory
    address); no FRAMEs (protocol 4's transport chunks, cut differently by the C and the Python pickler);
    strings as their values, whether pushed again or fetched from the memo (a pickler shares a string only
    if it sees the same str object twice); other memo entries numbered in order of creation."""
    out: list[tuple[str, Any]] = []
    memo: dict[int, tuple[str, Any]] = {}
    last: tuple[str, Any] | None = None
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name == "FRAME":
            continue
        if op.name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(memo) if op.name == "MEMOIZE" else arg
            objects = sum(kind == "OBJ" for kind, _ in memo.values())
            memo[index] = last if last is not None and last[0] == "STR" else ("OBJ", objects)
            if memo[index][0] == "OBJ":
                out.append(("PUT", objects))
            continue
        if op.name in ("BINGET", "LONG_BINGET"):
            last = memo[arg] if memo[arg][0] == "STR" else ("GET", memo[arg][1])
        elif "UNICODE" in op.name:
            last = ("STR", arg)
        else:
            last = (op.name, len(arg) if "BYTES" in op.name else arg)
        out.append(last)
    return out


def np1_scalar(dtype: Any, data: Any) -> Any:  # only named in written pickles
    raise AssertionError


np1_scalar.__module__, np1_scalar.__qualname__, np1_scalar.__name__ = "numpy.core.multiarray", "scalar", "scalar"


class Np1Scalar:
    """Pickles as numpy 1 did: numpy.core.multiarray.scalar(dtype, bytes)."""

    def __init__(self, value: float) -> None:
        self.value = np.float64(value)

    def __reduce__(self) -> Any:
        return np1_scalar, (self.value.dtype, self.value.tobytes())


@pytest.fixture
def numpy1_names(monkeypatch):
    stub = types.ModuleType("numpy.core.multiarray")
    stub.scalar = np1_scalar
    monkeypatch.setitem(sys.modules, "numpy.core.multiarray", stub)


@pytest.fixture(scope="module")
def weights():
    ema_sd, ema_avg = rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=1)
    g_sd, g_avg = rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=2)
    return ema_sd, ema_avg, nvidia_state_dict(ema_sd, ema_avg), nvidia_state_dict(g_sd, g_avg)


def write_snapshot(path: Path, nv_ema: dict, nv_g: dict, protocol: int = 4) -> Path:
    """A training snapshot as training_loop.py writes it (FORMATS.md 4.1), G and G_ema distinct."""
    disc = module("Discriminator", modules={"b32": module("DiscriminatorBlock", {"weight": torch.randn(4, 3, 1, 1)},
                                                          legacy_gain=Np1Scalar(0.25))}, c_dim=0)
    augment = module("AugmentPipe", {"p": torch.zeros([])}, {"Hz_geom": torch.randn(12), "Hz_fbank": torch.randn(3, 7)},
                     non_persistent=("Hz_fbank",), xflip=1.0)
    snapshot = {"training_set_kwargs": EasyDict(path="data.zip", resolution=32, use_labels=False, max_size=None),
                "G": generator_records(nv_g, 32, conv_clamp=256.0), "D": disc,
                "G_ema": generator_records(nv_ema, 32, conv_clamp=256.0), "augment_pipe": augment}
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [3, 4])
def test_an_unedited_export_is_the_same_pickle(tmp_path, weights, nvidia_names, numpy1_names, protocol):
    _, _, nv_ema, nv_g = weights
    src = write_snapshot(tmp_path / "network-snapshot.pkl", nv_ema, nv_g, protocol)
    rw = Rewriter(str(src), cache_dir=tmp_path / "cache")
    result = export_edited(rw.model, rw.info, tmp_path / "out.pkl")
    assert (result.format, result.changed) == ("nvidia", ())
    assert opcodes(result.path) == opcodes(src)
    before, after = fresh_descriptions(src, result.path)
    assert after == before and before["module_sources"] == 1
    for name in ("G", "D", "G_ema", "augment_pipe"):
        a, b = (state_dict_from_record(read_network_pickle(p)[name]) for p in (src, result.path))
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_an_edit_replaces_only_its_g_ema_tensor_and_renders_the_edited_images(tmp_path, weights, nvidia_names, numpy1_names):
    ema_sd, ema_avg, nv_ema, nv_g = weights
    src = write_snapshot(tmp_path / "network-snapshot.pkl", nv_ema, nv_g)
    rw = Rewriter(str(src), cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b16.conv1"), "edit")
    result = export_edited(rw.model, rw.info, tmp_path / "edited.pkl")
    new = rw.model.b16.conv1.conv.weight.detach()  # FORMATS.md 4.3: synthesis.b16.conv1.weight, the same shape
    assert result.changed == ("G_ema.synthesis.b16.conv1.weight",)
    assert opcodes(result.path) == opcodes(src)
    before, after = fresh_descriptions(src, result.path)
    assert at(before["data"], EDITED) != tensor_description(new)
    assert after["data"] == replaced_at(before["data"], EDITED, tensor_description(new))
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_generator(str(result.path))[0](z), rw.model(z))
        expected = reference_forward({**ema_sd, "convs.3.conv.weight": new[None]}, ema_avg, z=z, conv_clamp=256.0, nvidia=True)
        torch.testing.assert_close(rw.model(z), expected, **TOL)


def test_also_g_moves_g_by_the_same_change(tmp_path, weights, nvidia_names, numpy1_names):
    _, _, nv_ema, nv_g = weights
    src = write_snapshot(tmp_path / "network-snapshot.pkl", nv_ema, nv_g)
    rw = Rewriter(str(src), cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b8.conv0"), "edit")
    result = export_edited(rw.model, rw.info, tmp_path / "both.pkl", also_g=True)
    key = "synthesis.b8.conv0.weight"
    assert result.changed == (f"G_ema.{key}", f"G.{key}")
    data = read_network_pickle(result.path)
    g, g_ema = state_dict_from_record(data["G"]), state_dict_from_record(data["G_ema"])
    torch.testing.assert_close(g[key], nv_g[key] + (g_ema[key] - nv_ema[key]), rtol=0, atol=1e-6)
    assert all(torch.equal(g[k], nv_g[k]) for k in nv_g if k != key)


def test_writing_executes_and_imports_nothing_from_the_file(tmp_path, weights, nvidia_names, numpy1_names, monkeypatch):
    _, _, nv_ema, nv_g = weights
    marker = tmp_path / "ran.txt"
    planted = f"open({str(marker)!r}, 'w').write('executed')\n"
    g_ema = generator_records(nv_ema, 32)
    g_ema.meta["module_src"] = planted
    src = tmp_path / "planted.pkl"
    src.write_bytes(pickle.dumps({"G": generator_records(nv_g, 32), "G_ema": g_ema}))
    rw = Rewriter(str(src), cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b16.conv1"), "edit")
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib", "dnnlib.tflib.network"):
        monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    export_edited(rw.model, rw.info, tmp_path / "out.pkl")
    new = {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch_utils", "dnnlib", "training") or "_imported_module" in m}
    assert not marker.exists() and not new
    assert read_network_pickle(tmp_path / "out.pkl")["G_ema"].module_src == planted  # kept as text, byte for byte
