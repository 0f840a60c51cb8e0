"""ProGAN: state dicts in the rewriting repo's layout (FORMATS.md section 3), checked against an independent
reference forward written here from that description. Tolerance: rtol = atol = 1e-4 (fp32, CPU; measured
max abs difference 2e-5 on images in [-1, 1])."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model_rewrite.errors import ModelLoadError
from model_rewrite.hooks import run_until
from model_rewrite.models import load_generator
from model_rewrite.models.formats.progan import progan_from_state_dict

TOL = {"rtol": 1e-4, "atol": 1e-4}


def progan_state_dict(sizes: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """`layer{n}.conv.weight`, `layer{n}.wscale.b`, `output_{R}x{R}.*` with random weights and biases."""
    g = torch.Generator().manual_seed(seed)
    sd = {"layer1.conv.weight": torch.randn(sizes[1], sizes[0], 4, 4, generator=g),
          "layer1.wscale.b": 0.3 * torch.randn(sizes[1], generator=g),
          "layer2.conv.weight": torch.randn(sizes[1], sizes[1], 3, 3, generator=g),
          "layer2.wscale.b": 0.3 * torch.randn(sizes[1], generator=g)}
    n = 3
    for c_in, c_out in itertools.pairwise(sizes[1:]):
        for layer, cin in ((n, c_in), (n + 1, c_out)):
            sd[f"layer{layer}.conv.weight"] = torch.randn(c_out, cin, 3, 3, generator=g)
            sd[f"layer{layer}.wscale.b"] = 0.3 * torch.randn(c_out, generator=g)
        n += 2
    res = 4 * 2 ** (len(sizes) - 2)
    sd[f"output_{res}x{res}.conv.weight"] = torch.randn(3, sizes[-1], 1, 1, generator=g)
    sd[f"output_{res}x{res}.wscale.b"] = 0.1 * torch.randn(3, generator=g)
    return sd


def reference_forward(sd: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """FORMATS.md 3: per layer pixel norm, [nearest 2x], bias-free conv, x*gain/sqrt(in)+b, lrelu 0.2; output 1x1, gain 1, hardtanh."""
    def norm(x):
        return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)

    n_layers = len([k for k in sd if k.startswith("layer") and k.endswith("conv.weight")])
    x = z.view(z.shape[0], -1, 1, 1)
    for n in range(1, n_layers + 1):
        w, b = sd[f"layer{n}.conv.weight"], sd[f"layer{n}.wscale.b"]
        x = norm(x)
        if n >= 3 and n % 2 == 1:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        k = w.shape[-1]
        x = F.conv2d(x, w, padding=3 if n == 1 else 1)
        x = F.leaky_relu(x * (math.sqrt(2) / k) / math.sqrt(w.shape[1]) + b[None, :, None, None], 0.2)
    out = next(k for k in sd if k.startswith("output_")).split(".")[0]
    w, b = sd[f"{out}.conv.weight"], sd[f"{out}.wscale.b"]
    return F.hardtanh(F.conv2d(norm(x), w) / math.sqrt(w.shape[1]) + b[None, :, None, None])


SIZES = [32, 24, 16, 12, 8]  # z = 32, widths at 4, 8, 16, 32 px


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return progan_state_dict(SIZES)


def test_progan_matches_the_reference_and_reads_widths_from_shapes(tmp_path, sd):
    torch.save(sd, tmp_path / "proggan.pth")
    net, info = load_generator(f"progan:{tmp_path / 'proggan.pth'}")
    assert (info.kind, info.resolution, info.latent_shape) == ("progan", 32, (32, 1, 1)) and net.sizes == SIZES
    z = torch.randn(3, 32, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(z)
        torch.testing.assert_close(out, reference_forward(sd, z), **TOL)
        assert out.shape == (3, 3, 32, 32) and out.abs().max() <= 1.0


def test_old_key_layout_and_wrapped_state_dicts_load(tmp_path, sd):
    old = {}
    for key, value in sd.items():
        if key.startswith("layer"):
            n, rest = key[5:].split(".", 1)
            old[f"features.{int(n) - 1}.{rest}"] = value
        else:
            old["output." + key.split(".", 1)[1]] = value
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    net, _ = load_generator(f"progan:{tmp_path / 'old.pth'}")
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(z), reference_forward(sd, z), **TOL)


def test_editable_layers_read_normalised_upsampled_keys_and_linear_values(sd):
    net = progan_from_state_dict(sd, "fixture")
    specs = net.editable_layers()
    assert [s.name for s in specs] == [f"layer{n}.conv" for n in range(1, 9)]
    assert all(s.weight_module == s.name and s.key_axis == 1 for s in specs)
    z = torch.randn(2, 32)
    with torch.no_grad():
        before = run_until(net, "layer4", z).output
        rec = run_until(net, "layer5.conv", z)
    normed = before / torch.sqrt(before.square().mean(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(rec.input, F.interpolate(normed, scale_factor=2, mode="nearest"), **TOL)
    torch.testing.assert_close(rec.output, F.conv2d(rec.input, net.layer5.conv.weight, padding=1), **TOL)


def test_export_and_reload(tmp_path, sd):
    from model_rewrite.export import export_model

    torch.save(sd, tmp_path / "p.pth")
    net, info = load_generator(f"progan:{tmp_path / 'p.pth'}")
    path = export_model(net, info, tmp_path / "p.safetensors")
    again, info2 = load_generator(str(path))
    z = torch.randn(2, 32)
    assert info2.kind == "progan" and torch.equal(net(z), again(z))


def test_bad_progan_files_give_clear_errors(tmp_path, sd):
    torch.save({"g_ema": {}, "latent_avg": torch.zeros(2)}, tmp_path / "sg2.pt")
    with pytest.raises(ModelLoadError, match="stylegan2:PATH"):
        load_generator(f"progan:{tmp_path / 'sg2.pt'}")
    bad = dict(sd, **{"layer6.conv.weight": torch.randn(12, 7, 3, 3)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ModelLoadError, match=r"shape.pth does not match the architecture: wrong shapes layer6.conv.weight is \[12, 7, 3, 3\], expected \[12, 12, 3, 3\]"):
        load_generator(f"progan:{tmp_path / 'shape.pth'}")
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer8")}, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match="layer1..layer2L"):
        load_generator(f"progan:{tmp_path / 'odd.pth'}")
    nan = dict(sd, **{"layer3.wscale.b": torch.full((16,), float("nan"))})
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(ModelLoadError, match="layer3.wscale.b holds NaN"):
        load_generator(f"progan:{tmp_path / 'nan.pth'}")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "nan.pth").read_bytes()[:300])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_generator(f"progan:{tmp_path / 'cut.pth'}")


def test_an_edit_on_progan_changes_images_where_the_rule_fires(tmp_path, sd):
    from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig
    from model_rewrite.render import upsample_map

    torch.save(sd, tmp_path / "p.pth")
    rw = Rewriter(f"progan:{tmp_path / 'p.pth'}", cache_dir=tmp_path / "cache")
    mask = torch.zeros(32, 32)
    mask[8:20, 8:20] = 1
    layer = "layer5.conv"
    edit = rw.new_edit(layer, paste=Selection(1, mask), copy=Selection(2, mask.roll(8, 0)),
                       update=UpdateConfig(steps=20), stats=StatsConfig(num_samples=100, batch_size=50))
    held_out = list(range(10, 22))
    before = rw.sample(held_out)
    rw.apply(edit)
    change = (rw.sample(held_out) - before).abs().mean(1)
    # the layer output moves by L (d . k): images change more where |heat| is high. Later pixel norms and
    # the output clamp blur this on a random-weight net (measured ratio 1.74)
    heat = upsample_map(rw.heat(layer, rw.directions(layer, [edit.paste], stats=edit.stats), held_out), 32).abs()
    hot, cold = heat > torch.quantile(heat.flatten(), 0.9), heat < torch.quantile(heat.flatten(), 0.5)
    assert change[hot].mean() > 1.3 * change[cold].mean()
    rw.stack.undo()
    assert torch.equal(rw.sample(held_out), before)
