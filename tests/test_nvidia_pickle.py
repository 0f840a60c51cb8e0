"""NVIDIA StyleGAN2-ADA / StyleGAN3 network pickles: read without executing anything, mapped onto our
StyleGAN2, and refused when they reference anything else.

The pickles are built here in NVIDIA's layout (FORMATS.md 4.1-4.3): `torch_utils.persistence`
reconstruction records (class name, stub module source, pickled `__dict__` state), `dnnlib.util.EasyDict`
init kwargs, numpy scalar attributes and tensors pickled by torch. Stub modules exist under NVIDIA's names
only while a pickle is written. Image tolerance: rtol = atol = 1e-4 (fp32, CPU).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stylegan2_reference import nvidia_state_dict, reference_forward, rosinality_state_dict
from torch import nn

from model_rewrite.errors import ModelLoadError
from model_rewrite.models import load_generator
from model_rewrite.models.formats.nvidia import PersistentRecord, read_network_pickle, state_dict_from_record

TOL = {"rtol": 1e-4, "atol": 1e-4}
STUB_SRC = "# stand-in for training/networks.py\nimport os\nos.system('echo this source must never run')\n"


# --- writing pickles in NVIDIA's layout -----------------------------------------------------

def _reconstruct_persistent_obj(meta: Any) -> Any:  # only ever referenced by name in written pickles
    raise AssertionError("NVIDIA's reconstruction function must never be called")


class EasyDict(dict):
    __module__ = "dnnlib.util"


class Network:  # TensorFlow-era dnnlib.tflib.network.Network
    __module__ = "dnnlib.tflib.network"

    def __init__(self) -> None:
        self.name = "Gs"


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


@pytest.fixture
def nvidia_names(monkeypatch):
    """Stub modules `torch_utils.persistence`, `dnnlib.util`, `dnnlib.tflib.network`, so that pickle can write
    references to those names."""
    mods = {name: types.ModuleType(name) for name in
            ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib", "dnnlib.tflib.network")}
    for obj in (_reconstruct_persistent_obj, EasyDict, Network):
        setattr(mods[obj.__module__], obj.__name__, obj)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    yield
    # monkeypatch removes the stubs again


class Persistent:
    """Pickles as `_reconstruct_persistent_obj(meta)`, exactly as torch_utils.persistence does."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str = STUB_SRC, version: int = 6) -> None:
        self.meta = {"type": "class", "version": version, "module_src": module_src, "class_name": class_name, "state": state}

    def __reduce__(self) -> Any:
        return _reconstruct_persistent_obj, (self.meta,)


def module(class_name: str, params: dict[str, torch.Tensor] | None = None, buffers: dict[str, torch.Tensor] | None = None,
           modules: dict[str, Any] | None = None, non_persistent: tuple[str, ...] = (), **attrs: Any) -> Persistent:
    """A persistent nn.Module record: the __dict__ nn.Module pickles, with attributes and init kwargs."""
    state = {"training": False,
             "_parameters": OrderedDict((k, nn.Parameter(v.clone(), requires_grad=False)) for k, v in (params or {}).items()),
             "_buffers": OrderedDict((k, v.clone()) for k, v in (buffers or {}).items()),
             "_non_persistent_buffers_set": set(non_persistent),
             "_backward_pre_hooks": OrderedDict(), "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
             "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(), "_load_state_dict_pre_hooks": OrderedDict(),
             "_modules": OrderedDict(modules or {}),
             **attrs, "_init_args": (), "_init_kwargs": EasyDict(attrs.get("_kwargs", {}))}
    return Persistent(class_name, state)


def generator_records(nv: dict[str, torch.Tensor], resolution: int, conv_clamp: float | None = None, c_dim: int = 0) -> Persistent:
    """A G_ema record tree holding the NVIDIA-named tensors `nv` (FORMATS.md 4.3)."""
    n_mlp = len([k for k in nv if k.startswith("mapping.fc") and k.endswith(".weight")])
    w_dim = nv["mapping.fc0.weight"].shape[0]

    def fc(prefix: str, act: str, lr: float) -> Persistent:
        w = nv[f"{prefix}.weight"]
        return module("FullyConnectedLayer", {"weight": w, "bias": nv[f"{prefix}.bias"]}, activation=act,
                      weight_gain=np.float64(lr / math.sqrt(w.shape[1])), bias_gain=lr)

    def layer(prefix: str, res: int, up: int) -> Persistent:
        return module("SynthesisLayer", {k: nv[f"{prefix}.{k}"] for k in ("weight", "noise_strength", "bias")},
                      {k: nv[f"{prefix}.{k}"] for k in ("resample_filter", "noise_const")}, {"affine": fc(f"{prefix}.affine", "linear", 1.0)},
                      resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp, padding=1,
                      act_gain=np.float64(math.sqrt(2)))

    def torgb(prefix: str) -> Persistent:
        w = nv[f"{prefix}.weight"]
        return module("ToRGBLayer", {"weight": w, "bias": nv[f"{prefix}.bias"]}, modules={"affine": fc(f"{prefix}.affine", "linear", 1.0)},
                      conv_clamp=conv_clamp, weight_gain=np.float64(1 / math.sqrt(w.shape[1])))

    blocks = OrderedDict()
    res = 4
    while res <= resolution:
        p = f"synthesis.b{res}"
        mods: dict[str, Any] = {} if res == 4 else {"conv0": layer(f"{p}.conv0", res, 2)}
        mods["conv1"] = layer(f"{p}.conv1", res, 1)
        mods["torgb"] = torgb(f"{p}.torgb")
        params = {"const": nv[f"{p}.const"]} if res == 4 else {}
        blocks[f"b{res}"] = module("SynthesisBlock", params, {"resample_filter": nv[f"{p}.resample_filter"]}, mods,
                                   resolution=res, in_channels=0 if res == 4 else 1, is_last=res == resolution,
                                   architecture="skip", use_fp16=False, num_conv=1 if res == 4 else 2, num_torgb=1)
        res *= 2
    synthesis = module("SynthesisNetwork", modules=blocks, w_dim=w_dim, img_resolution=resolution, img_channels=3)
    mapping = module("MappingNetwork", buffers={"w_avg": nv["mapping.w_avg"]},
                     modules={f"fc{i}": fc(f"mapping.fc{i}", "lrelu", 0.01) for i in range(n_mlp)},
                     z_dim=nv["mapping.fc0.weight"].shape[1], c_dim=c_dim, w_dim=w_dim, num_layers=n_mlp, w_avg_beta=0.995)
    num_ws = 2 * int(math.log2(resolution)) - 2
    return module("Generator", modules={"synthesis": synthesis, "mapping": mapping}, z_dim=nv["mapping.fc0.weight"].shape[1],
                  c_dim=c_dim, w_dim=w_dim, img_resolution=resolution, img_channels=3, num_ws=num_ws,
                  _kwargs={"mapping_kwargs": EasyDict(num_layers=n_mlp), "synthesis_kwargs": EasyDict(conv_clamp=conv_clamp)})


def snapshot(g_ema: Any) -> dict[str, Any]:
    """A training snapshot like training_loop.py writes: G, D, G_ema, augment_pipe, training_set_kwargs."""
    disc = module("Discriminator", modules={"b32": module("DiscriminatorBlock", {"weight": torch.randn(4, 3, 1, 1)})}, c_dim=0)
    augment = module("AugmentPipe", {"p": torch.zeros([])}, {"Hz_geom": torch.randn(12), "Hz_fbank": torch.randn(3, 7)},
                     non_persistent=("Hz_fbank",), xflip=1.0)
    return {"training_set_kwargs": EasyDict(path="data.zip", resolution=32), "G": g_ema, "D": disc, "G_ema": g_ema,
            "augment_pipe": augment}


@pytest.fixture(scope="module")
def fixture():
    sd, latent_avg = rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=1)
    return sd, latent_avg, nvidia_state_dict(sd, latent_avg)


def write(path: Path, obj: Any) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


# --- loading ------------------------------------------------------------------------------------

def test_an_ada_snapshot_loads_and_matches_the_documented_architecture(tmp_path, fixture, nvidia_names):
    sd, latent_avg, nv = fixture
    path = write(tmp_path / "network-snapshot-000100.pkl", snapshot(generator_records(nv, 32)))
    net, info = load_generator(f"nvidia:{path}?truncation_psi=0.7")
    assert (info.kind, info.resolution, info.latent_shape) == ("stylegan2", 32, (32,)) and "NVIDIA" in info.source
    assert net.truncation_psi == 0.7 and net.noise_mode == "const"
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(z), reference_forward(sd, latent_avg, z=z, truncation=0.7, nvidia=True), **TOL)
        wplus = torch.randn(2, net.num_ws, 32, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(net(w=wplus), reference_forward(sd, latent_avg, wplus=wplus, nvidia=True), **TOL)
    plain = {load_generator(name)[1].fingerprint for name in (str(path), f"nvidia:{path}", f"stylegan2:{path}")}
    assert len(plain) == 1 and info.fingerprint not in plain  # psi is part of the fingerprint


def test_conv_clamp_is_applied_as_in_ada(tmp_path, fixture, nvidia_names):
    sd, latent_avg, nv = fixture
    path = write(tmp_path / "clamped.pkl", {"G_ema": generator_records(nv, 32, conv_clamp=0.5)})
    net, _ = load_generator(f"nvidia:{path}")
    assert net.conv_clamp == 0.5
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(z)
        torch.testing.assert_close(out, reference_forward(sd, latent_avg, z=z, conv_clamp=0.5, nvidia=True), **TOL)
        assert (out - reference_forward(sd, latent_avg, z=z, nvidia=True)).abs().max() > 0.1


def test_records_flatten_to_the_state_dict_in_module_order(tmp_path, fixture, nvidia_names):
    _, _, nv = fixture
    data = read_network_pickle(write(tmp_path / "g.pkl", snapshot(generator_records(nv, 32))))
    g = data["G_ema"]
    assert isinstance(g, PersistentRecord) and g.class_name == "Generator" and g.module_src_len == len(STUB_SRC)
    flat = state_dict_from_record(g)
    synthesis_first = [k for k in nv if k.startswith("synthesis.")] + [k for k in nv if k.startswith("mapping.")]
    assert sorted(flat) == sorted(synthesis_first) and next(iter(flat)).startswith("synthesis.b4")
    assert all(torch.equal(flat[k], nv[k]) for k in nv)
    assert isinstance(g.child("mapping").child("fc0").attr("weight_gain"), float)  # a numpy scalar, read as a number
    assert g.attr("_init_kwargs")["mapping_kwargs"].num_layers == 2  # EasyDict attribute access
    aug = state_dict_from_record(data["augment_pipe"])
    assert set(aug) == {"p", "Hz_geom"}  # the non-persistent buffer is left out


def test_loading_executes_and_imports_nothing_from_the_file(tmp_path, fixture, nvidia_names, monkeypatch):
    _, _, nv = fixture
    marker = tmp_path / "ran.txt"
    g = generator_records(nv, 32)
    g.meta["module_src"] = f"open({str(marker)!r}, 'w').write('executed')\n"
    path = write(tmp_path / "planted.pkl", {"G_ema": g})
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib", "dnnlib.tflib.network"):
        monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    load_generator(str(path))
    assert not marker.exists()
    new = {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch_utils", "dnnlib", "training") or "_imported_module" in m}
    assert not new


# --- refusals -----------------------------------------------------------------------------------

class _Call:
    """Pickles as a call of `fn(*args)` (what a malicious pickle does)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> Any:
        return self.fn, self.args


@pytest.mark.parametrize("payload, refused", [
    (lambda marker: _Call(os.system, f"touch {marker}"), f"refused global {os.system.__module__}.system"),
    (lambda marker: _Call(eval, f"open({str(marker)!r}, 'w')"), "refused global builtins.eval"),
    (lambda marker: _Call(getattr, _Call(__import__, "os"), "system"), "refused global builtins.getattr"),
    (lambda marker: _Call(Path.write_text, Path(marker), "x"), "refused global pathlib"),
])
def test_pickles_that_call_anything_else_are_refused(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.pkl", {"G_ema": payload(marker)})
    with pytest.raises(ModelLoadError, match=refused.replace(".", r"\.")):
        load_generator(str(path))
    assert not marker.exists()


def test_unknown_modules_are_refused(tmp_path):
    # GLOBAL opcode naming a module that does not exist anywhere
    data = b"\x80\x02}q\x00X\x05\x00\x00\x00G_emaq\x01cevil_module\nbackdoor\nq\x02)Rq\x03s."
    (tmp_path / "unknown.pkl").write_bytes(data)
    with pytest.raises(ModelLoadError, match=r"refused global evil_module\.backdoor"):
        load_generator(str(tmp_path / "unknown.pkl"))


def test_a_storage_blob_holding_a_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    blob = io.BytesIO()
    torch.save(_Call(os.system, f"touch {marker}"), blob, _use_new_zipfile_serialization=False)
    path = write(tmp_path / "storage.pkl", {"G_ema": _Call(torch.storage._load_from_bytes, blob.getvalue())})
    with pytest.raises(ModelLoadError, match="weights-only loader"):
        load_generator(str(path))
    assert not marker.exists()


def test_a_storage_blob_holding_something_else_than_a_storage_is_refused(tmp_path):
    blob = io.BytesIO()
    torch.save({"not": "a storage"}, blob, _use_new_zipfile_serialization=False)
    path = write(tmp_path / "dict.pkl", {"G_ema": _Call(torch.storage._load_from_bytes, blob.getvalue())})
    with pytest.raises(ModelLoadError, match="not a storage"):
        load_generator(str(path))


def test_object_dtypes_and_persistent_ids_are_refused(tmp_path):
    write(tmp_path / "obj.pkl", {"G_ema": np.dtype("O")})
    with pytest.raises(ModelLoadError, match="numpy dtype 'O8' is not allowed"):
        load_generator(str(tmp_path / "obj.pkl"))

    class PidPickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "storage" if isinstance(obj, str) and obj == "x" else None

    buf = io.BytesIO()
    PidPickler(buf).dump({"G_ema": "x"})
    (tmp_path / "pid.pkl").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match="persistent id"):
        load_generator(str(tmp_path / "pid.pkl"))


def test_tensorflow_pickles_are_refused_with_a_hint(tmp_path, nvidia_names):
    path = write(tmp_path / "tf.pkl", (Network(), Network(), Network()))
    with pytest.raises(ModelLoadError, match="TensorFlow"):
        load_generator(str(path))


def test_stylegan3_generators_are_refused_with_the_reason(tmp_path, nvidia_names):
    synthesis = module("SynthesisNetwork", modules={"input": module("SynthesisInput", {"freqs": torch.randn(4, 2)}),
                                                    "L0_36_512": module("SynthesisLayer", {"weight": torch.randn(2, 2, 3, 3)})})
    g = module("Generator", modules={"synthesis": synthesis, "mapping": module("MappingNetwork")}, c_dim=0, img_resolution=256, img_channels=3)
    with pytest.raises(ModelLoadError, match=r"StyleGAN3 .*config T or R.*--cfg=stylegan2"):
        load_generator(str(write(tmp_path / "sg3.pkl", {"G_ema": g})))


def test_unexpected_classes_and_configs_are_refused(tmp_path, fixture, nvidia_names):
    _, _, nv = fixture
    disc = snapshot(generator_records(nv, 32))
    disc["G_ema"] = disc["D"]
    with pytest.raises(ModelLoadError, match="G_ema is a Discriminator, not a Generator"):
        load_generator(str(write(tmp_path / "d.pkl", disc)))
    with pytest.raises(ModelLoadError, match="class-conditional"):
        load_generator(str(write(tmp_path / "cond.pkl", {"G_ema": generator_records(nv, 32, c_dim=10)})))
    with pytest.raises(ModelLoadError, match=r"no 'G_ema' network .*\['D', 'G'\]"):
        load_generator(str(write(tmp_path / "noema.pkl", {"G": disc["G"], "D": disc["D"]})))
    resnet = generator_records(nv, 32)
    resnet.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b16"].meta["state"]["architecture"] = "resnet"
    with pytest.raises(ModelLoadError, match="b16 uses architecture 'resnet'"):
        load_generator(str(write(tmp_path / "resnet.pkl", {"G_ema": resnet})))
    old = generator_records(nv, 32)
    old.meta["version"] = 4
    with pytest.raises(ModelLoadError, match="persistence format version 4"):
        load_generator(str(write(tmp_path / "v4.pkl", {"G_ema": old})))


def test_wrong_shapes_non_finite_weights_and_truncated_files_are_refused(tmp_path, fixture, nvidia_names):
    _, _, nv = fixture
    bad = dict(nv)
    bad["synthesis.b16.conv1.affine.weight"] = torch.randn(5, 32)
    with pytest.raises(ModelLoadError, match=r"shape.pkl does not match the architecture: wrong shapes synthesis.b16.conv1.affine.weight is \[5, 32\], expected \[24, 32\]"):
        load_generator(str(write(tmp_path / "shape.pkl", {"G_ema": generator_records(bad, 32)})))
    bad = dict(nv)
    bad["synthesis.b8.conv0.weight"] = nv["synthesis.b8.conv0.weight"] * float("inf")
    with pytest.raises(ModelLoadError, match=r"tensor synthesis\.b8\.conv0\.weight holds NaN or infinite"):
        load_generator(str(write(tmp_path / "inf.pkl", {"G_ema": generator_records(bad, 32)})))
    data = pickle.dumps({"G_ema": generator_records(nv, 32)})
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_generator(str(tmp_path / "cut.pkl"))


def test_records_cannot_be_rewritten_by_build_opcodes(tmp_path, fixture, nvidia_names):
    """A BUILD after the reconstruction call would otherwise set attributes (e.g. shadow `child`)."""
    _, _, nv = fixture
    data = bytearray(pickle.dumps({"G_ema": generator_records(nv, 32)}, protocol=4))
    assert data[-2:] == b"s."  # ... SETITEM STOP
    payload = pickle.dumps({"child": 1}, protocol=4)[2:-1]  # the dict, without PROTO/FRAME header and STOP
    if payload[:1] == b"\x95":  # FRAME opcode and its 8-byte length
        payload = payload[9:]
    # insert "<dict> BUILD" right before the final SETITEM: it applies to the G_ema record
    patched = bytes(data[:-2]) + payload + b"b" + b"s."
    (tmp_path / "build.pkl").write_bytes(patched)
    with pytest.raises(ModelLoadError, match="tries to modify a network record"):
        load_generator(str(tmp_path / "build.pkl"))
