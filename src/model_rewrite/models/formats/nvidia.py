"""NVIDIA StyleGAN2-ADA / StyleGAN3-repo network pickles (`.pkl`), read without executing anything from
the file, -> our StyleGAN2Generator (from their `G_ema`).

NVIDIA's own loader `exec`s the Python source embedded in the pickle and lets pickle call any global
(FORMATS.md 4.2). Here a restricted unpickler answers only an allow-list of globals (FORMATS.md 4.7):
network objects become plain `PersistentRecord`s whose embedded source is kept as inert text, tensors
are rebuilt by torch's own functions, storages are read with `torch.load(weights_only=True)`, and every
other global is refused with an UnpicklingError naming it. (The writer is models/formats/nvidia_writer.py.)
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ...errors import ModelLoadError
from ..checkpoint import check_file, fit_shape, load_strict
from ..info import ModelOrigin
from ..stylegan2 import StyleGAN2Generator, fir_taps
from .sampling import apply_sampling_options, options_text, split_sampling_options

PERSISTENCE_VERSION = 6  # torch_utils.persistence format version of every released NVIDIA pickle
_NUMPY_CODES = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})


# --- stand-ins for the globals a network pickle references -----------------------------------

@dataclass(frozen=True, slots=True)
class PersistentRecord:
    """A network object from a pickle, as data: its class name and pickled `__dict__` (`state`).

    The class's module source is kept as text (for writing the pickle back) and never executed. Frozen,
    without `__dict__` and refusing `__setstate__`, so a pickle cannot change its fields or methods (BUILD)."""

    class_name: str
    version: int
    module_src_sha256: str
    module_src_len: int
    state: dict[str, Any] = field(repr=False)
    module_src: str = field(default="", repr=False, compare=False)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("the pickle tries to modify a network record after creating it")

    def child(self, name: str) -> PersistentRecord | None:
        """The submodule record `name` (from `_modules`), or None."""
        mods = self.state.get("_modules") or {}
        value = mods.get(name)
        return value if isinstance(value, PersistentRecord) else None

    def children(self) -> dict[str, PersistentRecord]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, PersistentRecord)}

    def attr(self, name: str, default: Any = None) -> Any:
        """A plain attribute set in the class's `__init__` (e.g. `z_dim`, `conv_clamp`)."""
        return self.state.get(name, default)


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: validate and record, never exec."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a persistent object's meta is not a {'type': 'class', ...} dict")
    class_name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(src, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("a persistent object's meta lacks class_name/module_src/state of the right types")
    version = meta.get("version")
    if version != PERSISTENCE_VERSION:
        raise pickle.UnpicklingError(f"persistence format version {version!r} is not supported (expected {PERSISTENCE_VERSION})")
    return PersistentRecord(class_name, int(version), hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest(),
                            len(src), dict(state), src)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> torch.Tensor:
    """Stand-in for torch._utils._rebuild_parameter(_with_state): the plain data tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a Parameter's data is not a tensor")
    return data


def _load_storage_from_bytes(blob: Any) -> Any:
    """Stand-in for torch.storage._load_from_bytes, which would run torch.load(weights_only=False)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("a storage blob is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation
            storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- whatever torch raises, the storage is refused
        raise pickle.UnpicklingError(f"a tensor storage in the pickle was refused by torch's weights-only loader: {exc}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"a storage blob holds a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor_v2(storage: Any, offset: Any = None, size: Any = None, stride: Any = None, *args: Any) -> torch.Tensor:
    """Stand-in for torch._utils._rebuild_tensor_v2 that first checks the storage covers the tensor: torch
    would grow a short storage silently (uninitialised memory as weights, or a huge tensor from a tiny file)."""
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError("a tensor's storage is not a typed storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        check_extent(storage.size(), offset, size, stride)
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *args)


def check_extent(elements: int, offset: Any, size: Any, stride: Any) -> None:
    """UnpicklingError unless a tensor of `size` and `stride` at `offset` lies inside a storage of `elements`."""
    ints = lambda v: isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)  # noqa: E731
    if not (ints((offset,)) and ints(size) and ints(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError(f"a tensor has a malformed size {size!r}, stride {stride!r} or offset {offset!r}")
    needed = 0 if 0 in size else offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    if needed > elements or offset > elements:
        raise pickle.UnpicklingError(
            f"a tensor of size {list(size)} (stride {list(stride)}, offset {offset}) needs {needed} elements, but its "
            f"storage holds {elements}: the file is truncated or crafted")


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _NumpyDType:
    """Stand-in for numpy.dtype: plain numeric and bool codes only (no object or structured dtypes)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or code not in _NUMPY_CODES:
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not allowed (only {sorted(_NUMPY_CODES)})")
        self.code = code
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("unexpected numpy dtype state")
        self.byteorder = "<" if state[1] in ("|", "=") else state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(self.byteorder + self.code)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Stand-in for numpy's multiarray.scalar: the value as a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("a numpy scalar must be a plain dtype and its bytes")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise pickle.UnpicklingError("a numpy scalar has the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


_ALLOWED: Mapping[tuple[str, str], Callable[..., Any] | type] = MappingProxyType({
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
})


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of an NVIDIA network pickle, to harmless stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith("dnnlib.tflib"):
            raise pickle.UnpicklingError(
                "this is a TensorFlow-era StyleGAN pickle (dnnlib.tflib.Network); convert it to PyTorch first "
                "(e.g. rosinality's convert_weight.py, then load the .pt with stylegan2:PATH)")
        raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of an NVIDIA network pickle")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id: not part of an NVIDIA network pickle")


def read_network_pickle(path: str | Path, unpickler: type[RestrictedUnpickler] = RestrictedUnpickler) -> Any:
    """Unpickle an NVIDIA network pickle into plain data (PersistentRecords, tensors, dicts). Executes nothing.
    `unpickler` may be a RestrictedUnpickler subclass that keeps more (the writer's FaithfulUnpickler)."""
    path = Path(path)
    check_file(path, "a network pickle")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on storages: the error, if any, says what matters
            return unpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"refused to load {path}: {exc}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            MemoryError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path} as a network pickle ({type(exc).__name__}: {exc}); "
                             "the file may be truncated or damaged") from None


# --- from records to a state dict ------------------------------------------------------------

def state_dict_from_record(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The record's `nn.Module.state_dict()`: parameters, persistent buffers, then children, in order."""
    out: dict[str, torch.Tensor] = {}
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise ModelLoadError(f"{prefix}{name} in {record.class_name} is a {type(value).__name__}, not a tensor")
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise ModelLoadError(f"submodule {prefix}{name} of {record.class_name} is a {type(child).__name__}, "
                                 "not a persistent network object")
        out.update(state_dict_from_record(child, prefix + name + "."))
    return out


def generator_record(data: Any, source: str) -> PersistentRecord:
    """The `G_ema` record of a snapshot dict (or the record itself if the pickle holds just a generator)."""
    if isinstance(data, PersistentRecord):
        record = data
    elif isinstance(data, dict) and "G_ema" in data:
        record = data["G_ema"]
    else:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"{source} holds no 'G_ema' network (found {keys}); expected a StyleGAN2-ADA/StyleGAN3 snapshot")
    if not isinstance(record, PersistentRecord) or record.class_name != "Generator":
        name = record.class_name if isinstance(record, PersistentRecord) else type(record).__name__
        raise ModelLoadError(f"{source}: G_ema is a {name}, not a Generator")
    return record


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelLoadError(f"{what} is {value!r}, not a finite number")
    return float(value)


def stylegan2_arguments(g: PersistentRecord, source: str) -> dict[str, Any]:
    """StyleGAN2Generator arguments for an NVIDIA Generator record; refuses what our StyleGAN2 cannot run."""
    synthesis, mapping = g.child("synthesis"), g.child("mapping")
    if synthesis is None or mapping is None:
        raise ModelLoadError(f"{source}: the Generator has no synthesis/mapping networks")
    if synthesis.child("input") is not None or any(re.fullmatch(r"L\d+_\d+_\d+", n) for n in synthesis.children()):
        raise ModelLoadError(
            f"{source} is a StyleGAN3 generator (alias-free config T or R: Fourier-feature input, "
            "filtered lrelu, layers L0_36_512...). Only the StyleGAN2 architecture is supported: StyleGAN2-ADA "
            "pickles and stylegan3-repo pickles trained with --cfg=stylegan2")
    c_dim = g.attr("c_dim", 0)
    if c_dim:
        raise ModelLoadError(f"{source} is a class-conditional generator (c_dim={c_dim}); only unconditional ones are supported")
    if g.attr("img_channels", 3) != 3:
        raise ModelLoadError(f"{source} makes {g.attr('img_channels')}-channel images; only RGB (3) is supported")
    resolution = g.attr("img_resolution", synthesis.attr("img_resolution"))
    if not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
        raise ModelLoadError(f"{source}: img_resolution {resolution!r} is not a power of two >= 8")
    blocks = [f"b{4 * 2**i}" for i in range(resolution.bit_length() - 2)]
    missing = [b for b in blocks if synthesis.child(b) is None]
    if missing:
        raise ModelLoadError(f"{source}: synthesis network lacks blocks {missing} for {resolution}px")
    conv_clamps, activations = set(), set()
    for b in blocks:
        block = synthesis.child(b)
        assert block is not None
        arch = block.attr("architecture", "skip")
        if arch != "skip":
            raise ModelLoadError(f"{source}: block {b} uses architecture {arch!r}; only 'skip' (StyleGAN2 config E/F) is supported")
        for conv in ("conv0", "conv1"):
            layer = block.child(conv)
            if layer is not None:
                conv_clamps.add(layer.attr("conv_clamp"))
                activations.add(layer.attr("activation", "lrelu"))
                if layer.attr("use_noise", True) is False:
                    raise ModelLoadError(f"{source}: layer {b}.{conv} has use_noise=False, which is not supported")
    if activations != {"lrelu"}:
        raise ModelLoadError(f"{source}: activations {sorted(map(str, activations))} are not supported (only lrelu)")
    if len(conv_clamps) != 1:
        raise ModelLoadError(f"{source}: the layers use different conv_clamp values {sorted(map(str, conv_clamps))}")
    conv_clamp = conv_clamps.pop()
    fcs = sorted(int(m.group(1)) for n in mapping.children() if (m := re.fullmatch(r"fc(\d+)", n)))
    if not fcs or fcs != list(range(len(fcs))):
        raise ModelLoadError(f"{source}: mapping network layers fc0..fcN not found (got {sorted(mapping.children())})")
    fc0 = mapping.child("fc0")
    assert fc0 is not None
    lr_mlp = _number(fc0.attr("bias_gain", 0.01), "mapping.fc0.bias_gain")
    sd = state_dict_from_record(g)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ModelLoadError(f"{source}: G_ema has no tensor {key}")
        return tuple(sd[key].shape)

    return {"resolution": resolution,
            "channels": [shape(f"synthesis.{b}.conv1.weight")[0] for b in blocks],
            "z_dim": shape("mapping.fc0.weight")[1], "w_dim": shape(f"mapping.fc{fcs[-1]}.weight")[0],
            "n_mlp": len(fcs), "mapping_features": shape("mapping.fc0.weight")[0], "lr_mlp": lr_mlp,
            "conv_clamp": None if conv_clamp is None else _number(conv_clamp, "conv_clamp")}


def nvidia_key(key: str) -> str | None:
    """Our state-dict key for an NVIDIA `G_ema.state_dict()` key (FORMATS.md 4.3), None for the resample
    filters (fixed; ours are built from the taps). The tensors are stored the same way (FORMATS.md 4.4:
    unscaled) and differ at most by dimensions of size 1, so this one mapping serves the loader and the
    writer (models/formats/nvidia_writer.py). KeyError for keys our StyleGAN2 does not have."""
    if m := re.fullmatch(r"mapping\.(fc\d+\.(?:weight|bias)|w_avg)|synthesis\.(b\d+\.const)", key):
        return f"mapping.{m.group(1)}" if m.group(1) else m.group(2)
    if m := re.fullmatch(r"synthesis\.(b\d+\.conv[01])\.weight", key):
        return f"{m.group(1)}.conv.weight"
    if m := re.fullmatch(r"synthesis\.(b\d+\.conv[01]\.(?:affine\.weight|affine\.bias|noise_strength|bias|noise_const)|"
                         r"b\d+\.torgb\.(?:weight|bias|affine\.weight|affine\.bias))", key):
        return m.group(1)
    if re.fullmatch(r"synthesis\.b\d+(\.conv[01]|\.torgb)?\.resample_filter", key):
        return None
    raise KeyError(key)


def nvidia_name(ours: str) -> str:
    """The NVIDIA `G_ema` key of our state-dict key (the inverse of `nvidia_key`), for messages in the file's naming."""
    if ours.startswith("mapping.") or ours.startswith("sampling."):
        return ours
    if m := re.fullmatch(r"(b\d+\.conv[01])\.conv\.weight", ours):
        return f"synthesis.{m.group(1)}.weight"
    return f"synthesis.{ours}"


def state_dict_from_nvidia(sd: dict[str, torch.Tensor], model: StyleGAN2Generator) -> dict[str, torch.Tensor]:
    """Our StyleGAN2 state dict from NVIDIA `G_ema` names (`nvidia_key`); resample filters are checked
    and dropped. `sampling.*` take the model's current values."""
    expected = torch.outer(fir_taps(model.blur_kernel), fir_taps(model.blur_kernel))
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in sd.items():
        try:
            ours = nvidia_key(key)
        except KeyError:
            unexpected.append(key)
            continue
        if ours is not None:
            out[ours] = fit_shape(value, own[ours].shape) if ours in own else value
        elif value.shape != expected.shape or not torch.allclose(value.float(), expected, atol=1e-6):
            raise ModelLoadError(f"{key} is not the standard [1,3,3,1] filter; other resample filters are not supported")
    if unexpected:
        raise ModelLoadError(f"G_ema tensors that do not fit our StyleGAN2: {unexpected[:8]}")
    for key in ("sampling.psi", "sampling.cutoff", "sampling.noise_mode"):
        out[key] = own[key].clone()
    return out


def load_nvidia_pickle(path: str | Path) -> tuple[StyleGAN2Generator, str, ModelOrigin]:
    """A StyleGAN2Generator (eval mode, fp32, noise_mode 'const', no truncation) from the `G_ema` of an
    NVIDIA StyleGAN2-ADA or StyleGAN3-repo (--cfg=stylegan2) network pickle, a description of its source
    and its origin. `path` may end in sampling options (`PATH?truncation_psi=0.5`). Executes nothing from the file."""
    path, options = split_sampling_options(path)
    g = generator_record(read_network_pickle(path), str(path))
    model = StyleGAN2Generator(**stylegan2_arguments(g, str(path)))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict_from_record(g).items()}
    load_strict(model, state_dict_from_nvidia(sd, model), path, names={k: nvidia_name(k) for k in model.state_dict()})
    apply_sampling_options(model, options)
    return (model.eval(), f"NVIDIA network pickle {path.resolve()} (G_ema)",
            ModelOrigin("nvidia", str(path.resolve()), options_text(options)))
