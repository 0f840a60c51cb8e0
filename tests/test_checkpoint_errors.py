"""Hostile and damaged checkpoints (issue 10, items 9, 13, 14): storages shorter than their tensors, refused
globals named, keys named as the file names them, empty files, a wrong adapter latent shape, and bit flips
in the statistics cache. The crafted files are built here with pickle and torch, not with our writers."""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from model_rewrite import Rewriter, StatsConfig
from model_rewrite.errors import ModelLoadError
from model_rewrite.models import load_generator



class _Blob:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


class _Tensor:
    def __init__(self, blob: _Blob, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (blob, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def storage_blob(n: int) -> _Blob:
    """A storage of `n` floats as an NVIDIA pickle holds it (torch.save of the storage, legacy format)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.zeros(n).storage(), buf, _use_new_zipfile_serialization=False)
    return _Blob(buf.getvalue())


@pytest.mark.parametrize("offset, size, stride", [
    (0, (250_000_000,), (1,)),  # the 427-byte file: a 1 GB tensor over a 16-byte storage
    (0, (5,), (1,)),  # one element too many
    (3, (2,), (1,)),  # the offset pushes it past the end
    (0, (2, 2), (3, 1)),  # the strides reach element 4 of 4 (0..3 exist)
    (-1, (2,), (1,)),
    (0, (2,), (-1,)),
])
def test_a_tensor_larger_than_its_storage_is_refused(tmp_path, offset, size, stride):
    data = pickle.dumps({"G_ema": _Tensor(storage_blob(4), offset, size, stride)}, protocol=4)
    (tmp_path / "short.pkl").write_bytes(data)
    with pytest.raises(ModelLoadError, match="refused to load .*short.pkl: a tensor"):
        load_generator(str(tmp_path / "short.pkl"))


def test_a_tensor_inside_its_storage_is_rebuilt():
    from model_rewrite.models.formats.nvidia import RestrictedUnpickler

    data = pickle.dumps({"t": _Tensor(storage_blob(4), 1, (3,), (1,)), "u": _Tensor(storage_blob(4), 0, (2, 2), (2, 1)),
                         "e": _Tensor(storage_blob(0), 0, (0, 3), (3, 1))}, protocol=4)
    out = RestrictedUnpickler(io.BytesIO(data)).load()
    assert out["t"].shape == (3,) and out["u"].shape == (2, 2) and out["e"].shape == (0, 3)


def test_a_torch_checkpoint_whose_tensor_outgrows_its_storage_is_refused(tmp_path):
    """torch's own zip format: the size in data.pkl is edited to 2**20 elements over a storage of 10."""
    import zipfile

    buf = io.BytesIO()
    torch.save({"w": torch.arange(10, dtype=torch.float32)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(tmp_path / "big.pt", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert data.count(b"K\n\x85") == 1  # BININT1 10, TUPLE1: the size (10,)
                data = data.replace(b"K\n\x85", b"J\x00\x00\x10\x00\x85")
            dst.writestr(name, data)
    with pytest.raises(ModelLoadError, match="cannot read .*big.pt as a torch checkpoint"):
        load_generator(f"stylegan2:{tmp_path / 'big.pt'}")


class _System:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


@pytest.mark.parametrize("form, payload, global_name", [
    ("stylegan2:", {"g_ema": _System()}, "system"),
    ("progan:", {"layer1.conv.weight": _System()}, "system"),
    ("", {"netG_state_dict": collections.Counter()}, None),
    ("stylegan2:", {"g_ema": Path("x")}, "PosixPath"),
])
def test_a_hostile_torch_file_names_the_refused_global(tmp_path, capsys, form, payload, global_name):
    from model_rewrite.cli import main

    torch.save(payload, tmp_path / "evil.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["layers", "--model", f"{form}{tmp_path / 'evil.pth'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "\x1b" not in err and "evil.pth" in err, err
    assert [str(w.message) for w in caught] == []  # nothing from torch before the error
    if global_name:
        assert "refused to load" in err and global_name in err and "weights_only=False" not in err, err


@pytest.mark.parametrize("form, name", [("stylegan2:", "e.pt"), ("progan:", "e.pth"), ("", "e.pkl"), ("", "e.safetensors"),
                                        ("", "e.tar")])
def test_an_empty_file_says_it_is_empty(tmp_path, form, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"is empty \(0 bytes\)"):
        load_generator(f"{form}{tmp_path / name}")


def test_shape_errors_name_the_files_own_key(tmp_path):
    from stylegan2_reference import rosinality_state_dict

    sd, latent_avg = rosinality_state_dict(32)
    sd["convs.3.conv.weight"] = sd["convs.3.conv.weight"][:, :5]
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, tmp_path / "g.pt")
    with pytest.raises(ModelLoadError, match=r"g.pt does not match the architecture: wrong shapes convs.3.conv.weight is "):
        load_generator(f"stylegan2:{tmp_path / 'g.pt'}")
    sd, _ = rosinality_state_dict(32)
    del sd["to_rgbs.1.bias"]
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match=r"missing \['to_rgbs.1.bias'\]"):
        load_generator(f"stylegan2:{tmp_path / 'm.pt'}")


def test_a_wrong_adapter_latent_shape_says_so():
    from model_rewrite.models.adapter import GeneratorAdapter

    net = nn.Sequential(nn.Linear(8, 3 * 4 * 4), nn.Unflatten(1, (3, 4, 4)))
    with pytest.raises(ModelLoadError, match=r"latents of shape \(1, 5\) \(latent_shape=\(5,\)\).*latent_shape"):
        GeneratorAdapter(net, latent_shape=(5,), layers=["0"])
    assert GeneratorAdapter(net, latent_shape=(8,), layers=["0"]).resolution == 4


# --- item 9: the statistics cache checks its bytes ------------------------------------------------

def test_a_bit_flip_in_cached_statistics_is_caught_and_recomputed(tmp_path, caplog):
    cfg = StatsConfig(num_samples=30)
    good = Rewriter("tiny", cache_dir=tmp_path).stats("b16", cfg).moment.clone()
    path = next((tmp_path / "stats").glob("*.safetensors"))
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    for i in (header + 100, header + 1001, len(raw) - 5):  # bits inside the matrix's float64 bytes
        raw[i] ^= 0x10
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = Rewriter("tiny", cache_dir=tmp_path).stats("b16", cfg).moment
    assert torch.equal(again, good)
    assert sum("does not match its checksum" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level("WARNING"):  # replaced by a good entry: read without a word
        assert torch.equal(Rewriter("tiny", cache_dir=tmp_path).stats("b16", cfg).moment, good)
    assert not caplog.records
