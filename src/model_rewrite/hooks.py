"""Context managers that read from a model through forward hooks and always remove them."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import LayerNotFound


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once the wanted tensors are recorded."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path `name` (exactly as in `named_modules()`)."""
    modules = dict(model.named_modules())
    if name not in modules:
        nearby = [n for n in modules if n and "." not in n][:12]
        raise LayerNotFound(
            f"no module named {name!r} in {type(model).__name__}; top-level modules are {nearby}"
        )
    return modules[name]


@dataclass
class Recording:
    """What a trace saw: the input args/kwargs and the output of the traced module."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None

    @property
    def input(self) -> torch.Tensor:
        """The first positional input (for a weight module, the key map)."""
        return self.args[0]


@contextmanager
def trace(
    model: nn.Module,
    layer: str,
    *,
    stop: bool = False,
    record_input: bool = True,
    record_output: bool = True,
    detach: bool = True,
) -> Iterator[Recording]:
    """Record what module `layer` receives and returns during forwards inside the block.

    With `stop=True` the forward pass ends right after `layer` (right before it when
    `record_output=False`; the rest of the network does not run) and the StopForward is
    swallowed here. Hooks are removed even if the block raises.
    """
    module = get_module(model, layer)
    rec = Recording()

    def _keep(x: Any) -> Any:
        return x.detach() if detach and isinstance(x, torch.Tensor) else x

    def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if record_input:
            rec.args = tuple(_keep(a) for a in args)
            rec.kwargs = {k: _keep(v) for k, v in kwargs.items()}
        rec.output = _keep(output)
        if stop:
            raise StopForward()

    def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rec.args = tuple(_keep(a) for a in args)
        rec.kwargs = {k: _keep(v) for k, v in kwargs.items()}
        if stop:
            raise StopForward()

    if record_output:
        handle = module.register_forward_hook(hook, with_kwargs=True)
    else:  # only the input is wanted: stop before the module itself computes anything
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield rec
    except StopForward:
        if not stop:
            raise
    finally:
        handle.remove()


def run_until(model: nn.Module, layer: str, *inputs: Any, record_output: bool = True) -> Recording:
    """Run `model(*inputs)` only as far as `layer`; return what `layer` received (and returned)."""
    with trace(model, layer, stop=True, record_output=record_output) as rec:
        model(*inputs)
    if not rec.args:
        raise LayerNotFound(f"module {layer!r} was not called during the forward pass")
    return rec


def call_with_weight(module: nn.Module, param_path: str, weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)` with the parameter at `param_path` replaced by `weight`.

    Uses `torch.func.functional_call`, so the module is never mutated and gradients flow into
    `weight`. `param_path` is relative to `module` (e.g. "conv.weight").
    """
    from torch.func import functional_call

    return functional_call(module, {param_path: weight}, args, kwargs, strict=False)


@contextmanager
def replace_input(model: nn.Module, layer: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, module `layer` receives `fn(first_input)` instead of its first input."""
    module = get_module(model, layer)

    def pre(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fn(args[0]), *args[1:])

    handle = module.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def override_forward(module: nn.Module, fn: Callable[..., Any]) -> Iterator[None]:
    """Inside the block, calling `module` runs `fn(*args, **kwargs)` instead of its `forward`.

    The override is an instance attribute shadowing the class's method; it is removed (and any
    earlier instance attribute put back) even if the block raises. Hooks on `module` still run.
    """
    missing = object()
    before = module.__dict__.get("forward", missing)
    module.forward = fn  # type: ignore[method-assign]
    try:
        yield
    finally:
        if before is missing:
            del module.forward
        else:
            module.forward = before  # type: ignore[method-assign]
