"""StyleGAN2: agreement with the documented architecture (an independent fused reference built in
tests/stylegan2_reference.py from FORMATS.md), loading rosinality checkpoints, the split modulated
convolution used for rewriting, bad input, and an edit through the API.

Tolerance: fp32 on CPU, rtol = atol = 1e-4 (FORMATS.md section 5); measured max abs differences are
at most 9e-6 on images of magnitude up to 15.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import box_mask
from stylegan2_reference import modulated_conv, reference_forward, rosinality_state_dict, upfirdn

from model_rewrite.errors import ModelLoadError
from model_rewrite.hooks import call_with_weight, trace
from model_rewrite.models import fingerprint_model, load_generator
from model_rewrite.models.formats.rosinality import stylegan2_from_rosinality
from model_rewrite.models.stylegan2 import StyleGAN2Generator, upfirdn2d

TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return rosinality_state_dict(size=32, style_dim=32, n_mlp=2, seed=0)


@pytest.fixture()
def model(fixture) -> StyleGAN2Generator:
    sd, latent_avg = fixture
    return stylegan2_from_rosinality({"g_ema": sd, "latent_avg": latent_avg}, "fixture")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fixture) -> Path:
    sd, latent_avg = fixture
    path = tmp_path_factory.mktemp("sg2") / "stylegan2-tiny.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, path)
    return path


def z_batch(n: int = 4, dim: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --- agreement with the documented architecture ----------------------------------------------

def test_fixed_noise_images_match_the_reference(model, fixture):
    sd, latent_avg = fixture
    z = z_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(z), reference_forward(sd, latent_avg, z=z), **TOL)


def test_truncation_matches_the_reference(model, fixture):
    sd, latent_avg = fixture
    z = z_batch()
    model.truncation_psi = 0.6
    with torch.no_grad():
        out = model(z)
        torch.testing.assert_close(out, reference_forward(sd, latent_avg, z=z, truncation=0.6), **TOL)
        assert (out - reference_forward(sd, latent_avg, z=z)).abs().max() > 0.05  # truncation does something


def test_truncation_cutoff_truncates_only_the_first_ws(model, fixture):
    sd, latent_avg = fixture
    z = z_batch()
    model.truncation_psi, model.truncation_cutoff = 0.5, 3
    with torch.no_grad():
        w = model.mapping(z)
        wplus = w[:, None].repeat(1, model.num_ws, 1)
        wplus[:, :3] = latent_avg + 0.5 * (wplus[:, :3] - latent_avg)
        torch.testing.assert_close(model(z), reference_forward(sd, latent_avg, wplus=wplus), **TOL)


def test_explicit_per_sample_noise_matches_the_reference(model, fixture):
    sd, latent_avg = fixture
    z = z_batch()
    g = torch.Generator().manual_seed(5)
    noise = [torch.randn(4, 1, r, r, generator=g) for r in (4, 8, 8, 16, 16, 32, 32)]
    with torch.no_grad():
        torch.testing.assert_close(model(z, noise=noise), reference_forward(sd, latent_avg, z=z, noise=noise), **TOL)


def test_per_layer_wplus_latents_match_the_reference(model, fixture):
    """Distinct w per layer: catches any off-by-one in the w index of each layer (FORMATS.md 1.5 step 4)."""
    sd, latent_avg = fixture
    wplus = torch.randn(3, model.num_ws, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(w=wplus), reference_forward(sd, latent_avg, wplus=wplus), **TOL)
        torch.testing.assert_close(model(w=wplus[:, 0]), reference_forward(sd, latent_avg, wplus=wplus[:, :1].repeat(1, model.num_ws, 1)), **TOL)


def test_noise_modes(model, fixture):
    sd, latent_avg = fixture
    z = z_batch(2)
    zeros = [torch.zeros(1, 1, r, r) for r in (4, 8, 8, 16, 16, 32, 32)]
    with torch.no_grad():
        model.noise_mode = "none"
        torch.testing.assert_close(model(z), reference_forward(sd, latent_avg, z=z, noise=zeros), **TOL)
        model.noise_mode = "random"
        assert not torch.equal(model(z), model(z))
        model.noise_mode = "const"
        assert torch.equal(model(z), model(z))
    with pytest.raises(ValueError, match="noise_mode"):
        model.noise_mode = "fresh"


def test_upfirdn2d_matches_the_documented_definition():
    x = torch.randn(2, 3, 5, 5)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    kernel = torch.outer(taps, taps) * 4
    torch.testing.assert_close(upfirdn2d(x, taps, up=2, pad=(2, 1), gain=4.0), upfirdn(x, kernel, 2, (2, 1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(upfirdn2d(x, taps, pad=(1, 1), gain=4.0), upfirdn(x, kernel, 1, (1, 1)), rtol=1e-5, atol=1e-6)


# --- the split modulated convolution -----------------------------------------------------------

def _record(model: StyleGAN2Generator, layer: str, z: torch.Tensor):
    with torch.no_grad(), ExitStack() as stack:
        block = stack.enter_context(trace(model, layer))
        weight = stack.enter_context(trace(model, layer + ".conv"))
        model(z)
    return block, weight


@pytest.mark.parametrize("layer, src, up", [("b4.conv1", "conv1", False), ("b16.conv0", "convs.2", True), ("b16.conv1", "convs.3", False)])
def test_split_layer_with_an_overridden_weight_equals_the_fused_form(model, fixture, layer, src, up):
    """functional_call(block, {'conv.weight': W}) gives the fused modulated conv of W, demodulated from W."""
    sd, _ = fixture
    block_rec, weight_rec = _record(model, layer, z_batch(2))
    x, w, noise = block_rec.args
    block = model.get_submodule(layer)
    new_weight = block.conv.weight.detach() + 0.5 * torch.randn(block.conv.weight.shape, generator=torch.Generator().manual_seed(3))
    edited = dict(sd, **{f"{src}.conv.weight": new_weight[None]})
    expected = modulated_conv(edited, src, x, w, demod=True, up=up)
    expected = expected + sd[f"{src}.noise.weight"] * noise
    expected = F.leaky_relu(expected + sd[f"{src}.activate.bias"][None, :, None, None], 0.2) * 2**0.5
    with torch.no_grad():
        torch.testing.assert_close(call_with_weight(block, "conv.weight", new_weight, x, w, noise), expected, **TOL)
        torch.testing.assert_close(block(x, w, noise), block_rec.output, rtol=0, atol=0)  # the weight itself is untouched
    # the key is the style-modulated input, and the linear output has the value's grid
    torch.testing.assert_close(weight_rec.input, x * block.affine(w)[:, :, None, None], rtol=0, atol=0)
    assert weight_rec.output.shape == block_rec.output.shape


def test_demodulation_is_recomputed_so_scaling_output_filters_changes_nothing(model):
    block_rec, _ = _record(model, "b16.conv1", z_batch(2))
    block = model.get_submodule("b16.conv1")
    scales = torch.linspace(0.5, 3.0, block.conv.weight.shape[0])[:, None, None, None]
    with torch.no_grad():
        out = call_with_weight(block, "conv.weight", block.conv.weight * scales, *block_rec.args)
    torch.testing.assert_close(out, block_rec.output, rtol=1e-4, atol=1e-5)


def test_editable_layers_name_every_styled_conv(model):
    names = [s.name for s in model.editable_layers()]
    assert names == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0", "b32.conv1"]
    assert all(s.weight_module == s.name + ".conv" and s.key_axis == 1 for s in model.editable_layers())


# --- loading -----------------------------------------------------------------------------------

def test_load_generator_reads_a_rosinality_checkpoint(checkpoint, fixture):
    sd, latent_avg = fixture
    net, info = load_generator(f"stylegan2:{checkpoint}")
    assert (info.kind, info.resolution, info.latent_shape) == ("stylegan2", 32, (32,))
    assert info.model_id == f"stylegan2:{checkpoint}" and "rosinality" in info.source
    z = z_batch()
    with torch.no_grad():
        torch.testing.assert_close(net(z), reference_forward(sd, latent_avg, z=z), **TOL)


def test_widths_and_depths_are_read_from_the_shapes(tmp_path):
    """Widths that are not rosinality's table, 16 px, z=24 and 3 mapping layers."""
    sd, latent_avg = rosinality_state_dict(size=16, style_dim=24, n_mlp=3, channels={4: 20, 8: 12, 16: 6}, seed=4)
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, tmp_path / "odd.pt")
    net, info = load_generator(f"stylegan2:{tmp_path / 'odd.pt'}")
    assert net.channels == [20, 12, 6] and net.n_mlp == 3 and info.latent_shape == (24,) and info.resolution == 16
    z = z_batch(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(net(z), reference_forward(sd, latent_avg, z=z), **TOL)


def test_train_checkpoint_without_latent_avg_loads_with_a_deterministic_w_avg(tmp_path, fixture):
    sd, _ = fixture
    args = argparse.Namespace(size=32, latent=32, n_mlp=2, channel_multiplier=2, iter=10)
    ckpt = {"g": sd, "d": {"convs.0.0.weight": torch.zeros(2)}, "g_ema": sd, "g_optim": {"state": {}}, "d_optim": {},
            "args": args, "ada_aug_p": 0.0}
    torch.save(ckpt, tmp_path / "010000.pt")
    a, _ = load_generator(f"stylegan2:{tmp_path / '010000.pt'}")
    b, _ = load_generator(f"stylegan2:{tmp_path / '010000.pt'}")
    assert torch.equal(a.mapping.w_avg, b.mapping.w_avg)
    a.truncation_psi = 0.5
    z = z_batch()
    with torch.no_grad():
        expected_avg = a.mapping(torch.randn(4096, 32, generator=torch.Generator().manual_seed(7))).mean(0)
        assert (a.mapping.w_avg - expected_avg).abs().max() < 0.1 * expected_avg.abs().max()  # it is a mean of w
        torch.testing.assert_close(a(z), reference_forward(sd, a.mapping.w_avg, z=z, truncation=0.5), **TOL)


def test_bare_g_ema_state_dict_loads(tmp_path, fixture):
    sd, _ = fixture
    torch.save(sd, tmp_path / "g_ema.pt")
    _, info = load_generator(f"stylegan2:{tmp_path / 'g_ema.pt'}")
    assert info.resolution == 32


def test_export_and_reload_keep_weights_and_sampling_settings(tmp_path, checkpoint):
    from model_rewrite.export import export_model

    net, info = load_generator(f"stylegan2:{checkpoint}")
    net.truncation_psi, net.truncation_cutoff = 0.7, 4
    with torch.no_grad():
        net.b16.conv1.conv.weight.add_(0.1)  # as an edit would
    path = export_model(net, info, tmp_path / "edited.safetensors")
    again, info2 = load_generator(str(path))
    assert (again.truncation_psi, again.truncation_cutoff, info2.kind) == (0.7, 4, "stylegan2")
    z = z_batch()
    with torch.no_grad():
        assert torch.equal(net(z), again(z))


def test_sampling_options_in_the_model_name(checkpoint):
    net, info = load_generator(f"stylegan2:{checkpoint}?truncation_psi=0.6&noise_mode=none&truncation_cutoff=none")
    assert (net.truncation_psi, net.noise_mode, net.truncation_cutoff) == (0.6, "none", None)
    assert info.fingerprint != load_generator(f"stylegan2:{checkpoint}")[1].fingerprint
    with pytest.raises(ModelLoadError, match="unknown model option 'psi=0.5'"):
        load_generator(f"stylegan2:{checkpoint}?psi=0.5")
    with pytest.raises(ModelLoadError, match="bad model option"):
        load_generator(f"stylegan2:{checkpoint}?noise_mode=fresh")


def test_sampling_settings_are_part_of_the_fingerprint(model):
    base = fingerprint_model(model)
    model.truncation_psi = 0.5
    psi = fingerprint_model(model)
    model.noise_mode = "none"
    assert len({base, psi, fingerprint_model(model)}) == 3


# --- bad input ---------------------------------------------------------------------------------

def test_truncated_file_is_refused_with_a_clear_message(tmp_path, checkpoint):
    data = checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_generator(f"stylegan2:{tmp_path / 'cut.pt'}")


def test_non_finite_weights_are_refused(tmp_path, fixture):
    sd, latent_avg = fixture
    bad = dict(sd)
    bad["convs.1.conv.weight"] = sd["convs.1.conv.weight"].clone()
    bad["convs.1.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    torch.save({"g_ema": bad, "latent_avg": latent_avg}, tmp_path / "nan.pt")
    with pytest.raises(ModelLoadError, match=r"convs\.1\.conv\.weight holds NaN"):
        load_generator(f"stylegan2:{tmp_path / 'nan.pt'}")


def test_inconsistent_shapes_are_listed(tmp_path, fixture):
    sd, latent_avg = fixture
    bad = dict(sd)
    bad["convs.1.conv.modulation.weight"] = torch.randn(7, 32)  # should be (C_in=32, D=32)
    bad["convs.2.conv.weight"] = torch.randn(1, 24, 5, 3, 3)  # input width 5 does not follow 32
    torch.save({"g_ema": bad, "latent_avg": latent_avg}, tmp_path / "shapes.pt")
    with pytest.raises(ModelLoadError, match="does not match the architecture") as err:
        load_generator(f"stylegan2:{tmp_path / 'shapes.pt'}")
    # named in the file's own naming (rosinality's keys), not ours
    assert "convs.1.conv.modulation.weight" in str(err.value) and "convs.2.conv.weight" in str(err.value)


def test_missing_and_unknown_keys_are_listed(tmp_path, fixture):
    sd, latent_avg = fixture
    bad = {k: v for k, v in sd.items() if k != "to_rgbs.1.bias"}
    bad["style.1.scale"] = torch.zeros(1)
    torch.save({"g_ema": bad, "latent_avg": latent_avg}, tmp_path / "keys.pt")
    with pytest.raises(ModelLoadError, match=r"style\.1\.scale"):
        load_generator(f"stylegan2:{tmp_path / 'keys.pt'}")
    del bad["style.1.scale"]
    torch.save({"g_ema": bad, "latent_avg": latent_avg}, tmp_path / "keys.pt")
    with pytest.raises(ModelLoadError, match=r"missing \['to_rgbs.1.bias'\]"):
        load_generator(f"stylegan2:{tmp_path / 'keys.pt'}")


def test_a_progan_file_given_as_stylegan2_names_the_right_prefix(tmp_path):
    torch.save({"layer1.conv.weight": torch.zeros(8, 16, 4, 4)}, tmp_path / "progan.pth")
    with pytest.raises(ModelLoadError, match="progan:PATH"):
        load_generator(f"stylegan2:{tmp_path / 'progan.pth'}")


def test_missing_file_and_pickled_objects_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no checkpoint file"):
        load_generator(f"stylegan2:{tmp_path / 'nothere.pt'}")
    torch.save({"g_ema": {}, "evil": Path("x")}, tmp_path / "objects.pt")
    with pytest.raises(ModelLoadError, match=r"references the Python global pathlib\.PosixPath.*nothing in it was run"):
        load_generator(f"stylegan2:{tmp_path / 'objects.pt'}")


# --- an edit through the API -------------------------------------------------------------------

def test_an_edit_through_the_api_changes_images_where_the_context_fires(tmp_path, checkpoint):
    from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig
    from model_rewrite.render import upsample_map

    rw = Rewriter(f"stylegan2:{checkpoint}", cache_dir=tmp_path / "cache")
    layer = "b16.conv1"
    assert layer in [info.name for info in rw.layers()]
    edit = rw.new_edit(layer, paste=Selection(1, box_mask(32, 4, 14, 4, 14)), copy=Selection(2, box_mask(32, 16, 26, 16, 26)),
                       context=[Selection(1, box_mask(32, 4, 14, 4, 14)), Selection(3, box_mask(32, 8, 20, 8, 20))],
                       update=UpdateConfig(steps=30), stats=StatsConfig(num_samples=200, batch_size=50))
    held_out = list(range(10, 26))
    before = rw.sample([1] + held_out)
    rw.apply(edit)
    after = rw.sample([1] + held_out)
    change = (after - before).abs().mean(1)  # (N, H, W)

    # the paste image changes inside the paste box more than elsewhere (later layers and the recomputed
    # demodulation spread some change outside it; measured ratio 2.3)
    inside = box_mask(32, 4, 14, 4, 14).bool()
    assert change[0][inside].mean() > 1.5 * change[0][~inside].mean()

    # on held-out images the change follows where the rule's direction fires: the layer output moves by
    # L (d . k), so by |heat|; random weights fire negatively as often as positively (measured ratio 3.5)
    dirs = rw.directions(layer, list(edit.context), stats=edit.stats)
    heat = upsample_map(rw.heat(layer, dirs, held_out), 32).abs()  # (N, 32, 32)
    hot = heat > torch.quantile(heat.flatten(), 0.9)
    cold = heat < torch.quantile(heat.flatten(), 0.5)
    assert change[1:][hot].mean() > 2 * change[1:][cold].mean()

    rw.stack.undo()
    assert torch.equal(rw.sample([1] + held_out), before)
