"""Write an edited StyleGAN2 back into a copy of the NVIDIA network pickle it was read from, importing and
executing nothing from the file, so that NVIDIA's own `legacy.load_network_pickle` (and the StyleGAN3
visualizer) load the edited generator.

The file is read again by the restricted unpickler of nvidia.py, extended (`FaithfulUnpickler`) to keep
what writing it back needs: parameters stay `nn.Parameter`s with their `requires_grad`, each `EasyDict`,
numpy scalar and numpy dtype remembers the exact global that named it (`dnnlib.util` or `dnnlib`,
`numpy.core` or `numpy._core`) and its pickled state, and each network record keeps its module source as
inert text. The `G_ema` tensors our model changed are swapped in copy-on-write (records shared with `G`
stay as they were), and `NetworkPickler` pickles the snapshot again with the file's protocol: network
records as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with the original `meta` (type,
version, module source, class name, state), the stand-ins under their original global names, and tensors
through torch's own reduction (`_rebuild_tensor_v2`, `_rebuild_parameter`, `_load_from_bytes`), as
NVIDIA's training loop wrote them.
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
import pickle
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ...cache import atomic_write
from ...errors import ModelLoadError
from ..checkpoint import changed_tensors, moved_by
from ..stylegan2 import StyleGAN2Generator
from .nvidia import EasyDict, PersistentRecord, RestrictedUnpickler, generator_record, nvidia_key, read_network_pickle, \
    state_dict_from_record


def reconstruct_persistent_obj(meta: Any) -> Any:
    """Only ever named in written pickles (as torch_utils.persistence._reconstruct_persistent_obj)."""
    raise AssertionError("never called: reading goes through the restricted unpickler")


class _KeptEasyDict(EasyDict):
    """An EasyDict that keeps the state a pickle BUILDs on it (if any), to write it back the same way."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_pickled_state"] = state

    def __reduce_ex__(self, protocol: Any) -> Any:
        return copyreg.__newobj__, (type(self),), self.__dict__.get("_pickled_state"), None, iter(self.items())


class UtilEasyDict(_KeptEasyDict):
    """`dnnlib.util.EasyDict`."""


class DnnlibEasyDict(_KeptEasyDict):
    """`dnnlib.EasyDict`."""


class DTypeCall:
    """`numpy.dtype(*args)` and the state BUILT on it, checked by the reader's stand-in and kept verbatim."""

    def __init__(self, checked: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.checked = checked(*args)
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.checked.__setstate__(state)
        self.state = state

    def __reduce__(self) -> Any:
        return DTypeCall, self.args, self.state


def scalar_numpy_core(dtype: Any, data: Any) -> Any:
    """Only ever named in written pickles (as numpy.core.multiarray.scalar, numpy 1)."""
    raise AssertionError("never called")


def scalar_numpy_private_core(dtype: Any, data: Any) -> Any:
    """Only ever named in written pickles (as numpy._core.multiarray.scalar, numpy 2)."""
    raise AssertionError("never called")


@dataclasses.dataclass(frozen=True)
class ScalarCall:
    """A numpy scalar `scalar(dtype, data)` as written, under the global (`function`) that named it."""

    function: Callable[..., Any]
    dtype: DTypeCall
    data: bytes

    def __reduce__(self) -> Any:
        return self.function, (self.dtype, self.data)


_EASYDICTS: dict[tuple[str, str], type[EasyDict]] = {("dnnlib.util", "EasyDict"): UtilEasyDict,
                                                    ("dnnlib", "EasyDict"): DnnlibEasyDict}
_SCALARS: dict[tuple[str, str], Callable[..., Any]] = {("numpy.core.multiarray", "scalar"): scalar_numpy_core,
                                                       ("numpy._core.multiarray", "scalar"): scalar_numpy_private_core}
# Our stand-ins and the global names they are written under.
_NAMES: dict[Any, tuple[str, str]] = {
    reconstruct_persistent_obj: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    DTypeCall: ("numpy", "dtype"),
    **{obj: name for name, obj in _EASYDICTS.items()},
    **{obj: name for name, obj in _SCALARS.items()},
}


def _parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> nn.Parameter:
    """torch._utils._rebuild_parameter, kept as a Parameter (not called with hooks: torch never pickles them)."""
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool) or backward_hooks:
        raise pickle.UnpicklingError("a Parameter is not (tensor, requires_grad, no hooks)")
    return nn.Parameter(data, requires_grad=requires_grad)


class FaithfulUnpickler(RestrictedUnpickler):
    """The restricted unpickler (its allow-list decides what is read at all), keeping what is needed to
    write the pickle back unchanged: Parameters, and the exact global names of EasyDicts and numpy values."""

    def find_class(self, module: str, name: str) -> Any:
        checked = super().find_class(module, name)  # refuses everything outside the allow-list
        if (module, name) in _EASYDICTS:
            return _EASYDICTS[(module, name)]
        if (module, name) == ("numpy", "dtype"):
            return lambda *args: DTypeCall(checked, args)
        if (module, name) in _SCALARS:
            return lambda dtype, data=None: self._scalar(_SCALARS[(module, name)], checked, dtype, data)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _parameter
        if (module, name) == ("torch._utils", "_rebuild_parameter_with_state"):
            raise pickle.UnpicklingError("it holds a Parameter with extra Python state, which cannot be written back; "
                                         "export with --format safetensors")
        return checked

    @staticmethod
    def _scalar(function: Callable[..., Any], checked: Callable[..., Any], dtype: Any, data: Any) -> ScalarCall:
        if not isinstance(dtype, DTypeCall):
            raise pickle.UnpicklingError("a numpy scalar must have a numpy dtype")
        checked(dtype.checked, data)  # validates dtype and size
        return ScalarCall(function, dtype, bytes(data))


class NetworkPickler(pickle._Pickler):  # the Python pickler: only its save_global can be overridden
    """Pickles records and stand-ins as NVIDIA's code pickled the objects they stand for."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PersistentRecord):
            meta = {"type": "class", "version": obj.version, "module_src": obj.module_src,
                    "class_name": obj.class_name, "state": obj.state}
            return reconstruct_persistent_obj, (meta,)
        return NotImplemented

    def save_global(self, obj: Any, name: str | None = None) -> None:
        try:
            target = _NAMES.get(obj)
        except TypeError:  # unhashable
            target = None
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)

    # functions are dispatched straight to the base class's save_global: route them through ours
    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global}


def replaced(record: PersistentRecord, changes: dict[str, torch.Tensor], prefix: str = "") -> PersistentRecord:
    """`record` with the tensors named in `changes` (state-dict keys below `prefix`) swapped in: new records
    along the changed paths only; a Parameter stays a Parameter, with its requires_grad."""
    state = record.state
    new_state: dict[str, Any] | None = None
    for kind in ("_parameters", "_buffers"):
        entries = state.get(kind) or {}
        hits = [name for name in entries if prefix + name in changes]
        if hits:
            new_entries = copy.copy(entries)
            for name in hits:
                old, new = entries[name], changes[prefix + name]
                new_entries[name] = nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) \
                    else new.requires_grad_(old.requires_grad)
            new_state = new_state or dict(state)
            new_state[kind] = new_entries
    modules = state.get("_modules") or {}
    children = {name: replaced(child, changes, f"{prefix}{name}.") for name, child in modules.items()
                if isinstance(child, PersistentRecord)}
    if any(child is not modules[name] for name, child in children.items()):
        new_modules = copy.copy(modules)
        new_modules.update(children)
        new_state = new_state or dict(state)
        new_state["_modules"] = new_modules
    return record if new_state is None else dataclasses.replace(record, state=new_state)


def _protocol(path: Path) -> int:
    """The pickle protocol of the file (its PROTO opcode), at least 2."""
    with open(path, "rb") as f:
        head = f.read(2)
    return max(2, head[1]) if len(head) == 2 and head[0] == pickle.PROTO[0] else 2


def write_nvidia_pickle(source: Path, model: StyleGAN2Generator, out: Path, also_g: bool = False) -> list[str]:
    """Write `model`'s weights into a copy of the NVIDIA network pickle `source`, at `out` (atomically).

    Everything but the `G_ema` tensors our model changed is written back as it was read (`G`, `D`,
    `augment_pipe`, `training_set_kwargs`, every record's class name, version, init kwargs and module
    source); with `also_g`, `G` moves by the same change. Returns the changed keys (`G_ema.<key>`, ...)."""
    data = read_network_pickle(source, FaithfulUnpickler)
    g = generator_record(data, str(source))
    flat = state_dict_from_record(g)
    try:
        names = {key: nvidia_key(key) for key in flat}
    except KeyError as exc:
        raise ModelLoadError(f"{source}: G_ema tensor {exc} does not fit our StyleGAN2; was the file replaced?") from None
    changes = changed_tensors(flat, names, model.state_dict())
    result: Any = replaced(g, changes)
    changed = [f"G_ema.{key}" for key in changes]
    if not isinstance(data, PersistentRecord):
        result, new_g = copy.copy(data), result
        result["G_ema"] = new_g
        if also_g:
            other = data.get("G")
            other_flat = state_dict_from_record(other) if isinstance(other, PersistentRecord) else {}
            if any(k not in other_flat or other_flat[k].shape != flat[k].shape for k in changes):
                raise ModelLoadError(f"--also-g: {source} holds no 'G' matching G_ema; export without --also-g")
            result["G"] = replaced(other, {k: moved_by(other_flat[k], flat[k], new) for k, new in changes.items()})
            changed += [f"G.{key}" for key in changes]
    elif also_g:
        raise ModelLoadError(f"--also-g: {source} holds a lone generator, no 'G'; export without --also-g")
    protocol = _protocol(source)
    atomic_write(out, lambda f: _dump(result, f, protocol))
    return changed


def _dump(obj: Any, f: BinaryIO, protocol: int) -> None:
    NetworkPickler(f, protocol).dump(obj)
