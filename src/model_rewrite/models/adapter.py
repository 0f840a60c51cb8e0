"""Make any PyTorch generator rewritable: your module, how a seeded latent becomes its input, and the
layers to offer for editing (see docs/models.md for a worked example)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import LayerNotFound, ModelLoadError
from ..hooks import get_module
from ..layers import LayerSpec, key_axis_of
from .info import ModelInfo, model_info

InputFromLatent = Callable[[torch.Tensor], Any]
ImageFromOutput = Callable[[Any], torch.Tensor]


class GeneratorAdapter(nn.Module):
    """Any generator `net` seen as a model_rewrite generator.

    - `latent_shape`: the shape of one latent; image `seed` uses `latent_from_seed(seed, latent_shape)`,
      a standard normal tensor.
    - `input_from_latent(z)`: turns the batch z (B, *latent_shape) into `net`'s input: a tensor, or a tuple
      of positional arguments (e.g. `lambda z: (z, labels)`). It must be deterministic and keep z's device.
      Default: z itself.
    - `image_from_output(out)`: turns `net`'s output into images (B, 3, H, W) in [-1, 1] (e.g. `lambda out:
      out[0]` for a model returning a tuple, `lambda x: x * 2 - 1` for one making [0, 1]). Default: as is.
    - `layers`: the editable layers, as dotted module paths inside `net` (a Conv/ConvTranspose/Linear
      module, which is then both the weight module and the block, so the value is its linear output) or as
      LayerSpecs whose `name` is a block containing the weight module (the value is the block output).
    - `resolution`: the image size; if None, one forward pass on latent 0 (in eval mode) measures it.

    The adapter shares `net`'s parameters, buffers and submodules (it is a view, not a copy), so module
    paths, `state_dict()` keys and layer names are exactly those of `net`, and edits change `net` too.
    """

    latent_shape: tuple[int, ...]
    resolution: int
    name: str

    def __init__(self, net: nn.Module, *, latent_shape: Sequence[int], layers: Sequence[str | LayerSpec],
                 input_from_latent: InputFromLatent | None = None, image_from_output: ImageFromOutput | None = None,
                 resolution: int | None = None, name: str | None = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ModelLoadError(f"the adapter wraps an nn.Module, got {type(net).__name__}")
        # A view of `net`: the same parameter, buffer and submodule dictionaries (not registered as a child,
        # which would prefix every path with its attribute name).
        for shared in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            self.__dict__[shared] = net.__dict__[shared]
        # Plain attributes go straight into __dict__, so they cannot clash with `net`'s submodule names.
        if not layers:
            raise LayerNotFound("give at least one layer path to offer for editing (e.g. layers=['main.6'])")
        self.__dict__.update(_net=net, latent_shape=tuple(int(s) for s in latent_shape), name=name or type(net).__name__,
                             _input_from_latent=input_from_latent, _image_from_output=image_from_output)
        self.__dict__["_specs"] = [self._checked_spec(layer) for layer in layers]
        self.training = net.training
        self.__dict__["resolution"] = int(resolution) if resolution is not None else self._measure_resolution()

    @property
    def net(self) -> nn.Module:
        """The wrapped generator."""
        return self.__dict__["_net"]

    def _checked_spec(self, layer: str | LayerSpec) -> LayerSpec:
        if isinstance(layer, str):
            module = get_module(self.net, layer)
            spec = LayerSpec(name=layer, weight_module=layer, key_axis=key_axis_of(module))
        elif isinstance(layer, LayerSpec):
            spec = layer
            get_module(self.net, spec.name)
            module = get_module(self.net, spec.weight_module)
            spec.weight_path  # noqa: B018 -- raises if the weight module is not inside the block
        else:
            raise LayerNotFound(f"a layer is a module path or a LayerSpec, got {type(layer).__name__}")
        weight = getattr(module, spec.param_name, None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            raise LayerNotFound(f"{spec.weight_module} has no weight matrix {spec.param_name!r} to rewrite")
        if spec.key_axis not in (0, 1):
            raise LayerNotFound(f"{spec.name}: key_axis must be 0 or 1, got {spec.key_axis}")
        if getattr(module, "groups", 1) != 1:
            raise LayerNotFound(f"{spec.weight_module} is a grouped convolution (groups={module.groups}); "
                                "its keys do not span one channel space, so it cannot be rewritten")
        return spec

    def _measure_resolution(self) -> int:
        from ..latents import latent_from_seed

        param = next(self.net.parameters(), None)
        z = latent_from_seed(0, self.latent_shape)[None]
        if param is not None:
            z = z.to(param.device)
        modes = {m: m.training for m in self.net.modules()}
        self.net.eval()  # a probe must not update BatchNorm statistics
        try:
            with torch.no_grad():
                img = self(z)
        finally:
            for m, mode in modes.items():
                m.training = mode
        return int(img.shape[-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] from latents z (B, *latent_shape)."""
        args = self._input_from_latent(z) if self._input_from_latent is not None else z
        try:
            out = self.net(*args) if isinstance(args, tuple) else self.net(args)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # e.g. a matmul of the wrong shapes
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"{type(self.net).__name__} failed on latents of shape {tuple(z.shape)} (latent_shape="
                f"{self.latent_shape}{', through input_from_latent' if self._input_from_latent else ''}): {first}; "
                "check that latent_shape is the shape of one input the network takes") from None
        img = self._image_from_output(out) if self._image_from_output is not None else out
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3 or img.shape[2] != img.shape[3]:
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ModelLoadError(f"the generator must give square RGB images (B, 3, H, H), got {got}; "
                                 "pass image_from_output= to convert its output")
        return img

    def train(self, mode: bool = True) -> GeneratorAdapter:
        super().train(mode)
        self.net.training = mode
        return self

    def editable_layers(self) -> list[LayerSpec]:
        return list(self._specs)

    def architecture(self) -> dict[str, Any]:
        """A description only: an adapted module cannot be rebuilt from it (see docs/models.md, Export)."""
        return {"kind": "adapter", "net_class": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
                "latent_shape": list(self.latent_shape), "layers": [s.name for s in self._specs]}

    def model_info(self, model_id: str | None = None) -> ModelInfo:
        """A ModelInfo for `Rewriter(adapter, info=adapter.model_info())`: id, fingerprint, resolution, latents."""
        return model_info(self, model_id or self.name, f"in-memory {type(self.net).__name__} (adapter)")
