import pytest
import torch
from torch import nn

from helpers import hook_count

from model_rewrite.errors import LayerNotFound
from model_rewrite.hooks import call_with_weight, get_module, run_until, trace


_hook_count = hook_count


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


class _Two(nn.Module):
    """Two linear layers, the second also called with a keyword."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.unused = nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(input=self.a(x))


def test_nested_traces_record_their_own_modules_and_are_all_removed_even_on_errors():
    from model_rewrite.hooks import StopForward

    m, x = _Two(), torch.randn(4, 3)
    with trace(m, "a") as ra, trace(m, "b", record_input=False) as rb:
        out = m(x)
    assert torch.equal(ra.input, x) and torch.equal(ra.output, m.a(x)) and ra.kwargs == {}
    assert rb.args == () and rb.kwargs == {} and torch.equal(rb.output, out)
    with pytest.raises(ZeroDivisionError):
        with trace(m, "a"), trace(m, "b", stop=True):
            1 / 0
    assert _hook_count(m) == 0
    # a StopForward that is not the trace's own (stop=False) is not swallowed
    with pytest.raises(StopForward):
        with trace(m, "a"):
            raise StopForward()
    assert _hook_count(m) == 0


def test_trace_records_keywords_and_keeps_gradients_only_when_asked():
    m = _Two()
    x = torch.randn(2, 3, requires_grad=True)
    with trace(m, "b") as rec:
        m(x)
    assert rec.args == () and set(rec.kwargs) == {"input"} and not rec.kwargs["input"].requires_grad
    with trace(m, "b", detach=False) as live:
        m(x)
    assert live.kwargs["input"].requires_grad and live.output.requires_grad
    with trace(m, "a", stop=True, record_output=False, detach=False) as pre:
        m(x)
    assert pre.output is None and pre.input is x
    with trace(m, "a", stop=True) as post:  # stops right after the module: its output is recorded
        m(x)
        raise AssertionError("the forward went on past the traced module")
    assert torch.equal(post.output, m.a(x).detach())


def test_run_until_a_module_the_forward_never_calls_is_an_error():
    from model_rewrite.errors import LayerNotFound

    with pytest.raises(LayerNotFound, match="^module 'unused' was not called during the forward pass$"):
        run_until(_Two(), "unused", torch.randn(1, 3))


def test_get_module_lists_the_top_level_modules():
    with pytest.raises(LayerNotFound, match=r"^no module named 'c' in _Two; top-level modules are \['a', 'b', 'unused'\]"):
        get_module(_Two(), "c")
    m = _Two()
    assert get_module(m, "b") is m.b and get_module(m, "") is m


def test_replace_input_is_removed_even_when_the_forward_raises():
    from model_rewrite.hooks import replace_input

    m, x = _Two(), torch.randn(2, 3)
    want = m.a(x)
    with replace_input(m, "a", lambda t: t * 0):
        assert torch.equal(m.a(x), m.a(torch.zeros(2, 3)))
    with pytest.raises(RuntimeError, match="boom"):
        with replace_input(m, "a", lambda t: t + 1):
            raise RuntimeError("boom")
    assert _hook_count(m) == 0 and torch.equal(m.a(x), want)


def test_nested_overrides_restore_the_outer_one_then_the_class_forward():
    from model_rewrite.hooks import override_forward

    lin, x = nn.Linear(3, 2), torch.randn(4, 3)
    want = lin(x)
    outer, inner = (lambda inp: torch.ones(inp.shape[0], 2)), (lambda inp: torch.full((inp.shape[0], 2), 2.0))
    with override_forward(lin, outer):
        with pytest.raises(RuntimeError, match="boom"):
            with override_forward(lin, inner):
                assert bool((lin(x) == 2).all())
                raise RuntimeError("boom")
        assert lin.__dict__["forward"] is outer and bool((lin(x) == 1).all())
    assert "forward" not in lin.__dict__ and torch.equal(lin(x), want)
    # hooks on the module still run under an override
    seen = []
    h = lin.register_forward_hook(lambda *a: seen.append(1))
    try:
        with override_forward(lin, outer):
            lin(x)
    finally:
        h.remove()
    assert seen == [1]


def test_call_with_weight_passes_keywords_and_run_until_records_the_output_unless_told():
    m, x = _Two(), torch.randn(2, 3)
    w = torch.randn(2, 3)
    out = call_with_weight(m.b, "weight", w, input=x)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w, m.b.bias))
    rec = run_until(m, "a", x)
    assert torch.equal(rec.output, m.a(x).detach())

    class Refuses(nn.Linear):
        def forward(self, x):
            raise RuntimeError("the traced module must not run")

    m.a = Refuses(3, 3)
    rec = run_until(m, "a", x, record_output=False)
    assert torch.equal(rec.input, x) and rec.output is None


def test_get_module_lists_at_most_twelve_top_level_modules():
    m = nn.Sequential(*[nn.Identity() for _ in range(14)])
    with pytest.raises(LayerNotFound) as exc:
        get_module(m, "x")
    assert str(exc.value).endswith(f"top-level modules are {[str(i) for i in range(12)]}")
    nested = nn.Sequential(nn.Sequential(nn.Identity()), nn.Identity())
    with pytest.raises(LayerNotFound, match=r"top-level modules are \['0', '1'\]$"):  # not '0.0'
        get_module(nested, "x")
