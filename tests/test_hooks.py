import pytest
import torch
from torch import nn

from model_rewrite.errors import LayerNotFound
from model_rewrite.hooks import call_with_weight, get_module, run_until, trace


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_trace_removes_hook_when_forward_raises(tiny):
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with trace(tiny, "b8.conv"):
            tiny(torch.randn(2, 16, 1, 1))
            raise RuntimeError("boom")
    assert _hook_count(tiny) == 0
    assert all(torch.equal(state[k], v) for k, v in tiny.state_dict().items())


def test_trace_stop_swallows_only_its_own_stop(tiny):
    calls = []
    h = tiny.b16.register_forward_hook(lambda *a: calls.append(1))
    try:
        rec = run_until(tiny, "b8.conv", torch.randn(3, 16, 1, 1), record_output=False)
    finally:
        h.remove()
    assert rec.input.shape == (3, 32, 4, 4)
    assert calls == []  # the network stopped before b16
    assert _hook_count(tiny) == 0


def test_trace_records_input_and_output(tiny):
    z = torch.randn(2, 16, 1, 1)
    with trace(tiny, "b8") as rec:
        out = tiny(z)
    assert rec.output.shape == (2, 16, 8, 8) and out.shape == (2, 3, 32, 32)
    assert torch.equal(rec.input, tiny.b4(z))


def test_call_with_weight_leaves_module_untouched(tiny):
    before = tiny.b8.conv.weight.clone()
    x = torch.randn(1, 32, 4, 4)
    w = torch.randn_like(before)
    out = call_with_weight(tiny.b8, "conv.weight", w, x)
    assert torch.equal(tiny.b8.conv.weight, before)
    assert not torch.equal(out, tiny.b8(x))
    assert torch.allclose(out, tiny.b8.act(tiny.b8.norm(torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1))))


def test_get_module_names_the_choices(tiny):
    with pytest.raises(LayerNotFound, match="b4"):
        get_module(tiny, "nope")


def test_override_forward_is_undone_even_when_the_block_raises():
    from model_rewrite.hooks import override_forward

    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    want = lin(x)
    with override_forward(lin, lambda inp: torch.zeros(inp.shape[0], 2)):
        assert torch.equal(lin(x), torch.zeros(4, 2))
    assert torch.equal(lin(x), want) and "forward" not in lin.__dict__
    with pytest.raises(RuntimeError, match="boom"):
        with override_forward(lin, lambda inp: inp):
            raise RuntimeError("boom")
    assert torch.equal(lin(x), want) and "forward" not in lin.__dict__
