"""Which weight of a generator is edited, where its keys are read and where its values are read."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import LayerNotFound
from .hooks import get_module


@dataclass(frozen=True)
class LayerSpec:
    """An editable layer: the memory `W` and the block whose output is the value `v = f(W k)`.

    - `name`: the block's dotted module path; the value is its output (after the tail `f`).
    - `weight_module`: dotted path of the module that owns the edited weight; its first input
      is the key map and its output (with the weight's bias cancelled) is linear in the weight.
    - `key_axis`: the axis of the weight that reads the key (0 for ConvTranspose2d, 1 for
      Conv2d and Linear). Declared, never guessed from shapes.
    - `param_name`: the parameter's name on `weight_module`.
    """

    name: str
    weight_module: str
    key_axis: int
    param_name: str = "weight"

    @property
    def weight_path(self) -> str:
        """Path of the weight relative to the block (for `functional_call` on the block)."""
        if self.weight_module == self.name:
            return self.param_name
        prefix = self.name + "."
        if not self.weight_module.startswith(prefix):
            raise LayerNotFound(
                f"weight module {self.weight_module!r} must lie inside block {self.name!r}"
            )
        return self.weight_module[len(prefix) :] + "." + self.param_name

    @property
    def param_path(self) -> str:
        """Path of the weight relative to the whole model (a `state_dict` key)."""
        return self.weight_module + "." + self.param_name


def key_axis_of(module: nn.Module) -> int:
    """The key axis of a standard PyTorch layer's weight, by its type."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return 1
    raise LayerNotFound(
        f"cannot tell the key axis of {type(module).__name__}; declare a LayerSpec with key_axis"
    )


def editable_layers(model: nn.Module) -> list[LayerSpec]:
    """The layers a model offers for editing.

    Generators of this package define `editable_layers()`; for any other module every
    Conv/ConvTranspose/Linear submodule is offered as its own block.
    """
    own = getattr(model, "editable_layers", None)
    if callable(own):
        return list(own())
    specs = []
    for name, mod in model.named_modules():
        if not name:
            continue
        try:
            axis = key_axis_of(mod)
        except LayerNotFound:
            continue
        if getattr(mod, "groups", 1) != 1:
            continue
        specs.append(LayerSpec(name=name, weight_module=name, key_axis=axis))
    return specs


def layer_aliases(model: nn.Module) -> dict[str, str]:
    """Other names of a model's editable layers (alias -> our name), from the model's own `layer_aliases()`
    where it has one (StyleGAN2: the original authors' numbering, "layer8" -> "b32.conv1"); else none."""
    own = getattr(model, "layer_aliases", None)
    return dict(own()) if callable(own) else {}


def resolve_layer(model: nn.Module, layer: str | LayerSpec) -> LayerSpec:
    """The LayerSpec named `layer` (our name or an alias), with a clear error listing the choices if there
    is none, or the model's own explanation of that name (`why_not_editable(name)`, where it has one)."""
    if isinstance(layer, LayerSpec):
        return layer
    layer = layer_aliases(model).get(layer, layer)
    specs = editable_layers(model)
    for spec in specs:
        if spec.name == layer:
            get_module(model, spec.weight_module)
            return spec
    why = getattr(model, "why_not_editable", None)
    reason = why(layer) if callable(why) else None
    if reason:
        raise LayerNotFound(reason)
    aliases = list(layer_aliases(model))
    also = f" or one of their aliases {aliases}" if aliases else ""
    raise LayerNotFound(
        f"layer {layer!r} is not editable in this model; choose one of {[s.name for s in specs]}{also}"
        " (see `model-rewrite layers`)"
    )
