"""The adapter for any PyTorch generator, and the worked example of docs/models.md (executed here)."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from model_rewrite.errors import LayerNotFound, ModelLoadError
from model_rewrite.hooks import call_with_weight, get_module, trace
from model_rewrite.layers import LayerSpec
from model_rewrite.models.adapter import GeneratorAdapter

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


class TupleGenerator(nn.Module):
    """Takes (z, scale), returns (images in [0, 1], extras); has a root-level parameter and buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.register_buffer("offset", torch.zeros(()))
        self.fc = nn.Linear(8, 16 * 4 * 4)
        self.body = nn.Sequential(OrderedDict(conv=nn.Conv2d(16, 8, 3, padding=1), act=nn.LeakyReLU(0.2)))
        self.up = nn.ConvTranspose2d(8, 3, 4, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, z: torch.Tensor, scale: float):
        x = self.fc(z * scale).view(-1, 16, 4, 4)
        x = self.body(x) * self.gain + self.offset
        return torch.sigmoid(self.up(x)), {"extra": None}


def adapter(**kw) -> GeneratorAdapter:
    torch.manual_seed(0)
    net = TupleGenerator().eval()
    args = {"latent_shape": (8,), "input_from_latent": lambda z: (z, 2.0), "image_from_output": lambda out: out[0] * 2 - 1,
            "layers": ["fc", LayerSpec(name="body", weight_module="body.conv", key_axis=1), "up"]}
    args.update(kw)
    return GeneratorAdapter(net, **args)


def test_the_adapter_is_a_view_with_the_modules_own_paths():
    gen = adapter()
    net = gen.net
    assert list(gen.state_dict()) == list(net.state_dict())
    assert [n for n, _ in gen.named_modules()][1:] == [n for n, _ in net.named_modules()][1:]
    assert [s.name for s in gen.editable_layers()] == ["fc", "body", "up"]
    assert [s.key_axis for s in gen.editable_layers()] == [1, 1, 0]
    assert gen.resolution == 8 and gen.latent_shape == (8,)
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(gen(z), net(z, 2.0)[0] * 2 - 1)
        gen.get_parameter("up.weight").add_(1.0)  # an edit through the adapter changes the module
        net.gain.mul_(2.0)  # and a change of a root-level parameter shows through the adapter
        torch.testing.assert_close(gen(z), net(z, 2.0)[0] * 2 - 1)
    gen.train()
    assert net.training and net.body.training
    gen.eval()
    assert not net.training and not net.body.training
    gen.to(torch.float64)
    assert net.gain.dtype == torch.float64 and net.offset.dtype == torch.float64 and net.fc.weight.dtype == torch.float64


def test_functional_call_and_hooks_work_through_the_adapter():
    gen = adapter()
    z = torch.randn(2, 8)
    with trace(gen, "body") as rec, torch.no_grad():
        gen(z)
    body = get_module(gen, "body")
    w = body.conv.weight.detach() * 0
    with torch.no_grad():
        out = call_with_weight(body, "conv.weight", w, *rec.args)
    torch.testing.assert_close(out, torch.nn.functional.leaky_relu(body.conv.bias[None, :, None, None].expand_as(out), 0.2))
    assert not body._forward_hooks and not gen._forward_hooks


def test_bad_layers_and_outputs_give_clear_errors():
    with pytest.raises(LayerNotFound, match="no module named 'nope'"):
        adapter(layers=["nope"])
    with pytest.raises(LayerNotFound, match="grouped convolution"):
        adapter(layers=["dw"])
    with pytest.raises(LayerNotFound, match="cannot tell the key axis of Sequential"):
        adapter(layers=["body"])
    with pytest.raises(LayerNotFound, match="must lie inside block"):
        adapter(layers=[LayerSpec(name="body", weight_module="up", key_axis=0)])
    with pytest.raises(LayerNotFound, match="at least one layer"):
        adapter(layers=[])
    with pytest.raises(ModelLoadError, match="image_from_output"):
        adapter(image_from_output=None)  # a tuple is not an image batch


def test_an_edit_through_the_rewriter(tmp_path):
    from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig

    gen = adapter()
    rw = Rewriter(gen, info=gen.model_info("tuple-gen"), cache_dir=tmp_path)
    assert rw.info.model_id == "tuple-gen" and rw.info.kind == "adapter"
    paste = torch.zeros(8, 8)
    paste[1:4, 1:4] = 1
    edit = rw.new_edit("body", paste=Selection(0, paste), copy=Selection(1, paste.roll(4, 1)),
                       update=UpdateConfig(steps=10), stats=StatsConfig(num_samples=50))
    before = rw.sample([0])
    rw.apply(edit)
    assert not torch.equal(rw.sample([0]), before)
    rw.stack.undo()
    assert torch.equal(rw.sample([0]), before)


def test_export_of_an_adapted_model_names_the_way_to_reload(tmp_path):
    from model_rewrite import export_model
    from model_rewrite.models import load_generator

    gen = adapter()
    path = export_model(gen, gen.model_info(), tmp_path / "gen.safetensors")
    with pytest.raises(ModelLoadError, match="load_file"):
        load_generator(str(path))


def test_the_worked_example_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block after the '<!-- runnable' marker of docs/models.md, in order, in one namespace."""
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[text.index("<!-- runnable"):], flags=re.DOTALL)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_REWRITE_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 -- our own documentation
    out = capsys.readouterr().out
    assert "('main.1.conv', 64, 8)" in out and "('main.2', 32, 16)" in out
    change = float(re.search(r"mean change ([0-9.e-]+)", out).group(1))
    assert change > 1e-5  # random weights: the images themselves vary little (std about 5e-2)


def test_measuring_the_resolution_leaves_batchnorm_statistics_and_modes_alone():
    net = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 1, 0), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 3, 4, 2, 1)).train()
    stats = net[1].running_mean.clone()
    gen = GeneratorAdapter(net, latent_shape=(4, 1, 1), layers=["0", "2"])
    assert gen.resolution == 8 and torch.equal(net[1].running_mean, stats) and net.training and net[1].training
