"""The rewriting pipeline: from a request (context, copy, paste) to a solved LowRankDelta, and the
`Rewriter` that ties a model, its statistics cache and its edit stack together."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .cache import Store
from .config import StatsConfig, UpdateConfig
from .directions import key_directions
from .edits import EditSpec, EditStack, StackEntry
from .errors import InvalidEdit, SolveError
from .hooks import call_with_weight, get_module, override_forward
from .latents import latents_from_seeds
from .layers import LayerSpec, editable_layers, resolve_layer
from .masks import check_mask
from .models import ModelInfo, load_generator, model_info
from .render import generate
from .search import heat_maps, key_maps
from .stats import KeyStats, collect_key_stats
from .targets import Goal, Observation, Selection, context_keys, copy_paste_goal, erase_goal, erase_units, observe
from .update import LowRankDelta, delta_from_factors, linear_design, lstsq_factor, optimize_factor

log = logging.getLogger(__name__)
StepCallback = Callable[[int, float], "bool | None"]


@dataclass(frozen=True)
class LayerInfo:
    """What `Rewriter.layers()` reports for one editable layer."""

    name: str
    kind: str  # type of the weight module
    key_size: int  # C_in
    value_shape: tuple[int, ...]  # (C_out, Hv, Wv) of one image
    key_resolution: int  # Hk
    resolution: int  # Hv


@dataclass
class SolveResult:
    """A solved edit: the delta, its loss curve and timings."""

    delta: LowRankDelta
    losses: list[float] = field(default_factory=list)  # optimisation loss per step (L1 or L2)
    closed_form_loss: float = float("nan")  # the same loss at the closed-form solution
    goal_loss: float = float("nan")  # final loss
    seconds: float = 0.0
    cancelled: bool = False


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    inside = torch.zeros(shape, dtype=torch.bool)
    y0, y1, x0, x1 = box
    inside[y0:y1, x0:x1] = True
    return inside


def _goal_loss(pred: torch.Tensor, goal: Goal, kind: str, preserve: float) -> torch.Tensor:
    """Loss to the goal inside the box, plus `preserve` x loss to the unedited values outside it.

    The box is a rectangle, so its part is a slice (a view) and the outside part is the whole minus it:
    no boolean indexing, which costs as much as the rest of a factored Adam step.
    """
    y0, y1, x0, x1 = goal.box
    err = (pred - goal.values).abs() if kind == "l1" else (pred - goal.values) ** 2
    loss = err[..., y0:y1, x0:x1].mean()
    n_all, n_in = pred[0, 0].numel(), (y1 - y0) * (x1 - x0)
    if preserve > 0 and n_in < n_all:
        keep = (pred - goal.obs.values).abs() if kind == "l1" else (pred - goal.obs.values) ** 2
        outside = keep.sum() - keep[..., y0:y1, x0:x1].sum()
        loss = loss + preserve * outside / (keep.numel() // n_all * (n_all - n_in))
    return loss


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run the block inside with one intra-op thread, restoring the previous count.

    A solve is hundreds of tiny one-image steps: with several threads each step pays OpenMP
    synchronisation, and when another process shares the cores it stalls (measured: 20 s instead
    of 1.5 s for the default edit on a busy 2-core machine).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _factored_block_output(
    block: nn.Module,
    weight_module: nn.Module,
    spec: LayerSpec,
    w0: torch.Tensor,
    dirs: torch.Tensor,
    obs: Observation,
    reference: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`reference(factor)` (the block's output with weight W0 + L D) at the cost of a rank-r layer.

    The weight module's output is bilinear in (weight, keys) with the key axis contracted against
    the keys' channels, so op(W0 + L D, k) = op(W0, k) + op(L, D k) - op(0, D k): the first term is
    the recorded `obs.linear`, the others run the module on r projected channels instead of C_in.
    The block then runs with that output substituted for its weight module's (and the full weight
    in place, for whatever else reads it, e.g. StyleGAN2's demodulation). Each Adam step costs a
    fraction of a full layer. The identity is checked once on a random factor against `reference`;
    a module for which it does not hold (grouped convolutions, a weight used twice) keeps `reference`.
    """
    if obs.keys.dim() < 2 or obs.keys.shape[1] != dirs.shape[1]:
        return reference
    projected = torch.einsum("rc,bc...->br...", dirs, obs.keys)  # (B, r, *key grid)
    shape = list(w0.shape)
    shape[spec.key_axis] = dirs.shape[0]
    try:
        with torch.no_grad():  # op(0, D k): the module's constant part (its bias), to cancel
            offset = call_with_weight(weight_module, spec.param_name, w0.new_zeros(shape), projected)
    except Exception as exc:  # a module whose forward does not accept r channels: keep the reference path
        log.info("layer %s: factored solve unavailable (%s); using the full layer", spec.name, exc)
        return reference

    def fast(factor: torch.Tensor) -> torch.Tensor:
        change = call_with_weight(weight_module, spec.param_name, factor, projected) - offset
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        with override_forward(weight_module, lambda *_a, **_k: obs.linear + change):
            return call_with_weight(block, spec.weight_path, weight, *obs.args, **obs.kwargs)

    probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype).to(w0.device) * w0.std()
    try:
        with torch.no_grad():
            want, got = reference(probe), fast(probe)
        if want.shape == got.shape and float((want - got).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6:
            return fast
        log.info("layer %s: the factored solve does not match the full layer; using the full layer", spec.name)
    except Exception as exc:
        log.info("layer %s: factored solve unavailable (%s); using the full layer", spec.name, exc)
    return reference


def solve_update(
    model: nn.Module,
    spec: LayerSpec,
    dirs: torch.Tensor,
    goal: Goal,
    config: UpdateConfig,
    on_step: StepCallback | None = None,
) -> SolveResult:
    """Fit the factor L of W = W0 + L D to the goal, W0 being the model's current weight.

    The closed form (least squares on the linear output in the loss box) is exact for a linear
    tail and warm-starts the constrained Adam optimisation of the block's real output.
    """
    t0 = time.perf_counter()
    weight_module = get_module(model, spec.weight_module)
    block = get_module(model, spec.name)
    w0 = getattr(weight_module, spec.param_name).detach()
    dirs = dirs.to(w0.dtype)
    keys = goal.obs.keys
    zero = torch.zeros_like(w0)

    def linear_change(delta: torch.Tensor) -> torch.Tensor:
        return call_with_weight(weight_module, spec.param_name, delta, keys) - call_with_weight(weight_module, spec.param_name, zero, keys)

    with torch.no_grad():
        design = linear_design(linear_change, dirs, tuple(w0.shape), spec.key_axis)  # (P, r*T)
        inside = _box_mask(tuple(goal.linear.shape[2:]), goal.box)
        residual = (goal.linear - goal.obs.linear).movedim(1, -1).reshape(-1, goal.linear.shape[1])
        rows = inside.reshape(-1).to(design.device)
        # inside rows fit the goal; outside rows (weighted by preserve, per-position like the loss) ask for no change
        n_in, n_out = int(rows.sum()), int((~rows).sum())
        scale = (config.preserve * n_in / max(n_out, 1)) ** 0.5
        a = torch.cat([design[rows], scale * design[~rows]]) if scale > 0 else design[rows]
        b = torch.cat([residual[rows], torch.zeros_like(residual[~rows])]) if scale > 0 else residual[rows]
        factor0 = lstsq_factor(a, b, dirs.shape[0], tuple(w0.shape), spec.key_axis, config.ridge)

    def full_block_output(factor: torch.Tensor) -> torch.Tensor:  # the block run with the whole weight
        weight = w0 + delta_from_factors(factor, dirs, spec.key_axis)
        return call_with_weight(block, spec.weight_path, weight, *goal.obs.args, **goal.obs.kwargs)

    block_output = _factored_block_output(block, weight_module, spec, w0, dirs, goal.obs, full_block_output)

    def loss_fn(factor: torch.Tensor) -> torch.Tensor:
        return _goal_loss(block_output(factor), goal, config.loss, config.preserve)

    with torch.no_grad():
        cf_loss = float(loss_fn(factor0))
    result = SolveResult(LowRankDelta(spec.param_path, spec.key_axis, factor0, dirs), closed_form_loss=cf_loss, goal_loss=cf_loss)
    if config.method == "optimize" and config.steps > 0:
        cancelled = []

        def step_cb(step: int, loss: float) -> bool:
            stop = bool(on_step(step, loss)) if on_step is not None else False
            if stop:
                cancelled.append(step)
            return stop

        start = factor0 if config.warm_start else torch.zeros_like(factor0)
        with _single_thread():
            factor, losses = optimize_factor(loss_fn, start, config.steps, config.lr, step_cb)
        result = SolveResult(LowRankDelta(spec.param_path, spec.key_axis, factor, dirs), losses, cf_loss,
                             min(losses), cancelled=bool(cancelled))
    if not result.delta.is_finite():
        raise SolveError("the solved update holds NaN or infinite values; lower the learning rate or steps")
    result.seconds = time.perf_counter() - t0
    return result


class Rewriter:
    """A generator being rewritten: its layers, key statistics (cached), edits and previews.

    Construction loads the model and nothing else; statistics are computed on first use of a
    layer (or by `stats()`) and cached on disk by model fingerprint, layer and StatsConfig.
    """

    def __init__(self, model: str | nn.Module = "faces", *, device: str = "cpu", cache_dir: str | Path | None = None,
                 info: ModelInfo | None = None) -> None:
        if isinstance(model, nn.Module):
            self.model = model.to(device).eval()
            self.info = info or model_info(self.model, "custom", "in memory")
        else:
            self.model, self.info = load_generator(model, device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.store = Store(cache_dir)
        self.stack = EditStack(self.model)
        self._stats: dict[tuple[str, StatsConfig], KeyStats] = {}

    # --- looking at the model -------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """The editable layers with their kind, key size, value shape and resolutions."""
        z = self.latents([0])
        out = []
        for spec in editable_layers(self.model):
            obs = observe(self.model, spec, z)
            wmod = get_module(self.model, spec.weight_module)
            k, v = obs.keys, obs.values
            out.append(LayerInfo(spec.name, type(wmod).__name__, int(k.shape[1]), tuple(v.shape[1:]),
                                 int(k.shape[2]) if k.dim() > 2 else 1, int(v.shape[2]) if v.dim() > 2 else 1))
        return out

    def spec(self, layer: str | LayerSpec) -> LayerSpec:
        return resolve_layer(self.model, layer)

    def latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """Latents (N, ...) of the images named by `seeds`."""
        return latents_from_seeds(seeds, self.info.latent_shape).to(self.device)

    def sample(self, seeds: Sequence[int]) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] from the current (possibly edited) model."""
        return generate(self.model, self.latents(seeds))

    def sample_original(self, seeds: Sequence[int]) -> torch.Tensor:
        """Images from the unedited weights (the stack's W0), without touching the live model."""
        base = self.stack.base_weights()
        if not base:
            return self.sample(seeds)
        from torch.func import functional_call

        z = self.latents(seeds)
        with torch.no_grad():
            return torch.cat([functional_call(self.model, base, (z[i : i + 32],), strict=False).cpu() for i in range(0, len(z), 32)])

    # --- statistics -----------------------------------------------------------------------
    def stats(self, layer: str, config: StatsConfig = StatsConfig(), progress: Callable[[int, int], None] | None = None) -> KeyStats:
        """Key statistics of `layer` on the unedited model, from memory, disk cache or computed."""
        spec = self.spec(layer)
        mem_key = (spec.name, config)
        if mem_key in self._stats:
            return self._stats[mem_key]
        key = {"fingerprint": self.info.fingerprint, "layer": spec.name, "num_samples": config.num_samples,
               "stats_seed": config.stats_seed, "product_dtype": config.product_dtype, "what": "second_moment"}

        def compute() -> tuple[dict[str, torch.Tensor], dict]:
            with self.stack.lifted():  # statistics describe the unedited model
                s = collect_key_stats(self.model, spec, config, latent_shape=self.info.latent_shape, progress=progress)
            return {"moment": s.moment}, {"count": s.count}

        tensors, meta = self.store.get_or_compute("stats", f"{self.info.model_id.replace('/', '_')[-40:]}-{spec.name}-n{config.num_samples}-s{config.stats_seed}",
                                                  key, compute)
        stats = KeyStats(spec.name, tensors["moment"], int(meta["count"]), config.num_samples, config.stats_seed)
        self._stats[mem_key] = stats
        return stats

    # --- solving --------------------------------------------------------------------------
    def _selection(self, spec: LayerSpec, sel: Selection, what: str) -> tuple[Observation, torch.Tensor, torch.Tensor]:
        mask = check_mask(sel.mask, self.info.resolution, what).to(self.device)
        z = self.latents([sel.seed])
        return observe(self.model, spec, z), mask, z

    def directions(self, layer: str, context: Sequence[Selection], rank: int = 1, stats: StatsConfig = StatsConfig(),
                   eig_floor: float = 1e-6) -> torch.Tensor:
        """Context directions D (r, C_in) of painted context selections at `layer`."""
        spec = self.spec(layer)
        if not context:
            raise InvalidEdit("give at least one context selection")
        obs = [self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(context)]
        keys, weights = context_keys(obs)
        return key_directions(keys, weights, self.stats(layer, stats).moment, rank, eig_floor)

    def solve(self, edit: EditSpec, on_step: StepCallback | None = None) -> SolveResult:
        """Solve an edit against the current model (W0 = the current weight of its layer)."""
        edit.check_model(edit.model, self.info.fingerprint, [s.name for s in editable_layers(self.model)])
        spec = self.spec(edit.layer)
        cfg = edit.update
        context = list(edit.context) or [edit.paste]
        ctx = [self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(context)]
        stats = self.stats(spec.name, edit.stats)
        keys, weights = context_keys(ctx)
        dirs = key_directions(keys, weights, stats.moment, cfg.rank, cfg.eig_floor)
        paste_obs, paste_mask, paste_z = self._selection(spec, edit.paste, "paste")
        if cfg.erase or edit.copy is None:
            units = erase_units(ctx, stats.moment, cfg.erase_units)
            goal = erase_goal(self.model, spec, paste_z, paste_obs, paste_mask, units, cfg.tight_paste)
        else:
            copy_obs, copy_mask, _ = self._selection(spec, edit.copy, "copy")
            goal = copy_paste_goal(copy_obs, copy_mask, paste_obs, paste_mask, cfg.tight_paste)
        return solve_update(self.model, spec, dirs, goal, cfg, on_step)

    def apply(self, edit: EditSpec, delta: LowRankDelta | None = None, on_step: StepCallback | None = None) -> StackEntry:
        """Solve the edit (unless its delta is given) and push it on the edit stack."""
        edit.check_model(edit.model, self.info.fingerprint, [s.name for s in editable_layers(self.model)])
        if delta is None:
            result = self.solve(edit, on_step)
            if result.cancelled:
                raise SolveError("the edit was cancelled")
            delta = result.delta
        elif delta.param_path != self.spec(edit.layer).param_path:
            raise InvalidEdit(f"the saved factors are for {delta.param_path}, not layer {edit.layer}")
        return self.stack.push(delta, edit.name, edit)

    def heat(self, layer: str, dirs: torch.Tensor, seeds: Sequence[int], which: int = 0) -> torch.Tensor:
        """Heat maps (N, Hk, Wk) of direction `which` on the images `seeds`, on the CPU like `sample`."""
        spec = self.spec(layer)
        keys = key_maps(self.model, spec, self.latents(seeds))
        return heat_maps(keys, dirs.to(keys.device, torch.float32), which).cpu()

    def new_edit(self, layer: str, paste: Selection, copy: Selection | None = None, context: Sequence[Selection] = (),
                 update: UpdateConfig = UpdateConfig(), stats: StatsConfig = StatsConfig(), name: str = "") -> EditSpec:
        """An EditSpec for this model (id and fingerprint filled in)."""
        return EditSpec(self.info.model_id, self.info.fingerprint, layer, paste, copy, tuple(context), update, stats, name)

