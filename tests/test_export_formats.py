"""`export --format same`: an edited model written back in its input's own format (rosinality `.pt`, ProGAN and
DCGAN state dicts; NVIDIA pickles are in test_export_nvidia.py), and the refusals.

Each file is built here with the formats' documented key names (FORMATS.md), compared with the written file
key by key (`export_checks.differences`: structure, dtypes and bytes), and rendered by reference code of the
tests (stylegan2_reference, test_progan's reference, a standard DCGAN nn.Sequential) rather than by the
package. The expected name of an edited tensor comes from FORMATS.md's tables, not from the writers.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from export_checks import differences, random_delta
from helpers import FACE_MODEL_REASON, box_mask, has_face_model
from stylegan2_reference import reference_forward, rosinality_state_dict
from test_progan import SIZES, progan_state_dict
from test_progan import reference_forward as progan_reference
from torch import nn

from model_rewrite import Rewriter, Selection, save_edit
from model_rewrite.cli import main
from model_rewrite.errors import ExportError, ModelLoadError
from model_rewrite.export import export_edited, sidecar_path
from model_rewrite.models import load_generator

TOL = {"rtol": 1e-4, "atol": 1e-4}
Z = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))


def read(path: Path):
    """The file as torch reads it with weights_only=True (argparse.Namespace allowed, as for train.py files)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# --- rosinality ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ros():
    return rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=1)


def train_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """rosinality train.py's layout (FORMATS.md 1.1): g, d, g_ema (an OrderedDict with _metadata), optimizers, args."""
    g = torch.Generator().manual_seed(9)
    g_ema = OrderedDict(sd)
    g_ema._metadata = OrderedDict([("", {"version": 1}), ("style", {"version": 1})])
    return {"g": OrderedDict((k, v + 0.01 * torch.randn(v.shape, generator=g)) for k, v in sd.items()),
            "d": OrderedDict([("convs.0.0.weight", torch.randn(8, 3, 1, 1, generator=g)),
                              ("final_linear.1.bias", torch.randn(1, generator=g).half())]),
            "g_ema": g_ema,
            "g_optim": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=g)}},
                        "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "params": [0]}]},
            "d_optim": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0]}]},
            "args": argparse.Namespace(size=32, latent=32, n_mlp=2, channel_multiplier=2, iter=10), "ada_aug_p": 0.25}


@pytest.mark.parametrize("layout, legacy", [("train", False), ("convert", True), ("bare", False)])
def test_an_unedited_rosinality_export_is_the_input_bit_for_bit(tmp_path, ros, layout, legacy):
    sd, latent_avg = ros
    ckpt = {"train": lambda: train_checkpoint(sd), "convert": lambda: {"g_ema": sd, "latent_avg": latent_avg},
            "bare": lambda: sd}[layout]()
    src = tmp_path / "in.pt"
    torch.save(ckpt, src, _use_new_zipfile_serialization=not legacy)
    rw = Rewriter(f"stylegan2:{src}", cache_dir=tmp_path / "cache")
    result = export_edited(rw.model, rw.info, tmp_path / "out.pt")
    assert (result.format, result.changed) == ("rosinality", ())
    assert differences(read(src), read(result.path)) == []
    assert zipfile.is_zipfile(result.path) == zipfile.is_zipfile(src) == (not legacy)
    if layout == "train":  # the same argparse allow-list is needed, and suffices
        with pytest.raises(Exception, match="argparse.Namespace"):
            torch.load(result.path, weights_only=True)
    else:
        torch.load(result.path, weights_only=True)


def test_a_rosinality_edit_changes_only_its_tensor_and_renders_the_edited_images(tmp_path, ros):
    sd, latent_avg = ros
    src = tmp_path / "convert.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, src)
    rw = Rewriter(f"stylegan2:{src}", cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b16.conv1"), "edit")
    result = export_edited(rw.model, rw.info, tmp_path / "edited.pt", ["glasses.json"])
    out = read(result.path)
    # FORMATS.md 4.5: b{R}.conv1 is rosinality convs.{2k+1} with R = 2^(k+3), so b16.conv1 is convs.3
    assert differences(read(src), out) == ["g_ema/convs.3.conv.weight"]
    assert result.changed == ("g_ema.convs.3.conv.weight",)
    assert torch.equal(out["g_ema"]["convs.3.conv.weight"], rw.model.b16.conv1.conv.weight.detach()[None])
    with torch.no_grad():
        edited = rw.model(Z)
        reference = reference_forward(out["g_ema"], out["latent_avg"], z=Z)
        torch.testing.assert_close(reference, edited, **TOL)
        assert (reference - reference_forward(sd, latent_avg, z=Z)).abs().max() > 1e-2  # the edit shows
        assert torch.equal(load_generator(f"stylegan2:{result.path}")[0](Z), edited)
    meta = json.loads(sidecar_path(result.path).read_text())
    assert meta["edits"] == ["glasses.json"] and meta["changed_tensors"] == ["g_ema.convs.3.conv.weight"]
    assert meta["base_fingerprint"] == rw.info.fingerprint != meta["fingerprint"] and meta["base_file"] == str(src)


def test_also_g_moves_the_training_generator_by_the_same_change(tmp_path, ros):
    sd, _ = ros
    ckpt = train_checkpoint(sd)
    src = tmp_path / "010000.pt"
    torch.save(ckpt, src)
    rw = Rewriter(f"stylegan2:{src}", cache_dir=tmp_path / "cache")
    rw.stack.push(random_delta(rw, "b8.conv0"), "edit")
    plain = read(export_edited(rw.model, rw.info, tmp_path / "plain.pt").path)
    both = read(export_edited(rw.model, rw.info, tmp_path / "both.pt", also_g=True).path)
    key = "convs.0.conv.weight"  # FORMATS.md 4.5: b8.conv0 (k = 0) is convs.0
    assert differences(ckpt, plain) == [f"g_ema/{key}"]
    assert differences(ckpt, both) == [f"g/{key}", f"g_ema/{key}"]
    change = plain["g_ema"][key] - sd[key]
    torch.testing.assert_close(both["g"][key], ckpt["g"][key] + change, rtol=0, atol=1e-6)


# --- ProGAN and DCGAN --------------------------------------------------------------------------------

def test_progan_exports_keep_the_wrapper_and_the_old_key_layout(tmp_path):
    sd = progan_state_dict(SIZES)
    old = OrderedDict()  # FORMATS.md 3: features.{n-1}.* and output.*
    for key, value in sd.items():
        old[f"features.{int(key[5:].split('.')[0]) - 1}.{key.split('.', 1)[1]}" if key.startswith("layer")
            else "output." + key.split(".", 1)[1]] = value
    src = tmp_path / "proggan.pth"
    torch.save({"state_dict": old, "epoch": 7}, src)
    rw = Rewriter(f"progan:{src}", cache_dir=tmp_path / "cache")
    assert differences(read(src), read(export_edited(rw.model, rw.info, tmp_path / "same.pth").path)) == []
    rw.stack.push(random_delta(rw, "layer3.conv"), "edit")
    out = read(export_edited(rw.model, rw.info, tmp_path / "edited.pth").path)
    assert differences(read(src), out) == ["state_dict/features.2.conv.weight"]
    z = torch.randn(2, 32, 1, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = progan_reference({**sd, "layer3.conv.weight": out["state_dict"]["features.2.conv.weight"]}, z)
        torch.testing.assert_close(rw.model(z), expected, **TOL)
        assert torch.equal(load_generator(f"progan:{tmp_path / 'edited.pth'}")[0](z), rw.model(z))


def standard_dcgan(nz: int = 16, ngf: int = 8, nc: int = 3) -> nn.Sequential:
    """The standard DCGAN generator (PyTorch's DCGAN example), 32 px: main.0, main.3, main.6 up-convs with
    BatchNorm after each, main.9 to RGB and Tanh; random weights and running statistics."""
    torch.manual_seed(4)
    main = nn.Sequential(nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
                         nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                         nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
                         nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    for m in main:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked += 5
    return nn.Sequential(OrderedDict(main=main)).eval()


def test_dcgan_exports_keep_the_checkpoint_layout(tmp_path):
    net = standard_dcgan()
    src = tmp_path / "dcgan.tar"
    torch.save({"epoch": 3, "netG_state_dict": net.state_dict(), "netD_state_dict": {"main.0.weight": torch.randn(4, 3, 4, 4)},
                "loss": [0.5, 0.25]}, src)
    rw = Rewriter(str(src), cache_dir=tmp_path / "cache")
    assert rw.info.origin.format == "dcgan"
    assert differences(read(src), read(export_edited(rw.model, rw.info, tmp_path / "same.tar").path)) == []
    rw.stack.push(random_delta(rw, "b16"), "edit")
    out = read(export_edited(rw.model, rw.info, tmp_path / "edited.tar").path)
    assert differences(read(src), out) == ["netG_state_dict/main.6.weight"]  # b16 is the third up-conv, main.6
    net.load_state_dict(out["netG_state_dict"])
    z = torch.randn(2, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(z), rw.model(z), **TOL)
        assert torch.equal(load_generator(str(tmp_path / "edited.tar"))[0](z), rw.model(z))


@pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)
def test_the_face_model_exports_in_its_own_format_beside_the_wheel(tmp_path):
    rw = Rewriter("faces", cache_dir=tmp_path / "cache")
    wheel_file = Path(rw.info.origin.path)
    assert differences(read(wheel_file), read(export_edited(rw.model, rw.info, tmp_path / "faces.tar").path)) == []
    rw.stack.push(random_delta(rw, "b32"), "edit")
    out = read(export_edited(rw.model, rw.info, tmp_path / "edited.tar").path)
    assert [d.rsplit("/", 1)[-1] for d in differences(read(wheel_file), out)] == ["main.9.weight"]


# --- refusals ----------------------------------------------------------------------------------------

def test_models_built_from_code_export_to_safetensors_only(tmp_path, capsys):
    from model_rewrite.models.adapter import GeneratorAdapter
    from model_rewrite.models.tiny import tiny_generator

    rw = Rewriter("tiny", cache_dir=tmp_path / "cache")
    edit = save_edit(tmp_path / "edit.json", rw.new_edit("b16", paste=Selection(3, box_mask(32, 8, 20, 8, 20))),
                     random_delta(rw, "b16"))
    rc = main(["export", str(edit), "--model", "tiny", "--out", str(tmp_path / "t.pt"), "--format", "same",
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("error: ") and "built from code" in err
    assert "--format safetensors" in err and not (tmp_path / "t.pt").exists()
    net = tiny_generator(0)
    adapted = GeneratorAdapter(net, latent_shape=(net.nz, 1, 1), layers=["b16.conv"], resolution=32)
    arw = Rewriter(adapted, info=adapted.model_info("mine"), cache_dir=tmp_path / "cache")
    with pytest.raises(ExportError, match="built from code"):
        export_edited(arw.model, arw.info, tmp_path / "a.pt", fmt="same")
    assert export_edited(arw.model, arw.info, tmp_path / "a.safetensors").format == "safetensors"


def test_the_input_file_is_never_overwritten(tmp_path, ros):
    sd, latent_avg = ros
    src = tmp_path / "model.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, src)
    os.symlink(src, tmp_path / "link.pt")
    before = src.read_bytes()
    rw = Rewriter(f"stylegan2:{src}", cache_dir=tmp_path / "cache")
    for out in (src, tmp_path / "link.pt", tmp_path / "." / "model.pt"):
        with pytest.raises(ExportError, match="is the model's own file"):
            export_edited(rw.model, rw.info, out)
    assert src.read_bytes() == before
    with pytest.raises(ExportError, match="not safetensors"):
        export_edited(rw.model, rw.info, tmp_path / "x.safetensors", fmt="same")
    with pytest.raises(ModelLoadError, match="--also-g"):
        export_edited(rw.model, rw.info, tmp_path / "g.pt", also_g=True)  # a convert_weight file has no g
    assert export_edited(rw.model, rw.info, tmp_path / "x.safetensors").format == "safetensors"  # the default there


def test_cli_export_writes_the_input_format_by_default(tmp_path, ros, capsys):
    sd, latent_avg = ros
    src = tmp_path / "model.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, src)
    name = f"stylegan2:{src}?truncation_psi=0.6"
    rw = Rewriter(name, cache_dir=tmp_path / "cache")
    edit = save_edit(tmp_path / "edit.json", rw.new_edit("b16.conv1", paste=Selection(1, box_mask(32, 4, 14, 4, 14))),
                     random_delta(rw, "b16.conv1"))
    out = tmp_path / "edited.pt"
    assert main(["export", str(edit), "--model", name, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "rosinality format, 1 tensor(s) changed" in printed and "max difference 0.00e+00" in printed
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["edits"] == [str(edit)] and meta["sampling_options"] == "truncation_psi=0.6"
    rw.stack.push(random_delta(rw, "b16.conv1"), "edit")
    with torch.no_grad():  # the file holds no truncation: reloaded with the same option, it renders the edit
        assert torch.equal(load_generator(f"stylegan2:{out}?truncation_psi=0.6")[0](Z), rw.model(Z))
    assert main(["export", str(edit), "--model", name, "--out", str(tmp_path / "e.safetensors"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "(safetensors)" in capsys.readouterr().out
