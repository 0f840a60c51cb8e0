"""The `Rewriter`: one generator being rewritten, tying together its layers, key statistics (cached),
context directions, solves, edit stack and samples. The steps themselves live in their own modules."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from . import distributed
from .cache import Store
from .config import KeyConfig, StatsConfig, UpdateConfig
from .directions import key_directions, key_spectrum, zca_whitener
from .distributed import sharded
from .edits import EditSpec, Selection, check_made_for
from .errors import IncompatibleEdit, InvalidEdit, SolveError
from .goals import Goal, Observation, context_keys, copy_paste_goal, erase_goal, erase_units, observe, render_values
from .hooks import get_module
from .latents import check_latent_scheme, latents_for
from .layers import LayerSpec, editable_layers, layer_aliases, resolve_layer
from .masks import check_mask
from .models import ModelInfo, check_device, load_generator, model_info
from .render import generate
from .search import heat_maps, key_maps
from .solve import SolveResult, StepCallback, solve_update
from .stack import EditStack, StackEntry
from .stats import KeyStats, collect_key_stats, stats_cache_key
from .update import LowRankDelta

if TYPE_CHECKING:  # pragma: no cover
    from .joint import JointResult
    from .suggest import Candidate

OBSERVED_CACHE = 16  # observations of (weights, layer, image) kept by `Rewriter.observe`


@dataclass(frozen=True)
class LayerInfo:
    """What `Rewriter.layers()` reports for one editable layer."""

    name: str
    kind: str  # type of the weight module
    key_size: int  # C_in
    value_shape: tuple[int, ...]  # (C_out, Hv, Wv) of one image
    key_resolution: int  # Hk
    resolution: int  # Hv
    alias: str = ""  # the original authors' name for it, where they had one (StyleGAN2: "layer8")


class Rewriter:
    """A generator being rewritten: its layers, key statistics (cached), edits and previews.

    Construction loads the model and nothing else; statistics are computed on first use of a
    layer (or by `stats()`) and cached on disk by model fingerprint, layer and StatsConfig.
    `latents` says how image numbers become latents: "seeds" (ours) or "paper" (the original
    authors' numbering, so their request files' image numbers show the same images); it is the
    attribute `latent_scheme`, which edits must match.
    """

    def __init__(self, model: str | nn.Module = "faces", *, device: str = "cpu", cache_dir: str | Path | None = None,
                 info: ModelInfo | None = None, latents: str = "seeds") -> None:
        self.latent_scheme = check_latent_scheme(latents)
        if isinstance(model, nn.Module):
            self.model = model.to(check_device(device)).eval()
            self.info = info or model_info(self.model, "custom", "in memory")
        else:
            self.model, self.info = load_generator(model, device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.store = Store(cache_dir)
        self.stack = EditStack(self.model)
        self._stats: dict[tuple[str, StatsConfig], KeyStats] = {}
        self._whiteners: dict[tuple[str, StatsConfig, float], torch.Tensor] = {}
        self._recent: dict[tuple[str, int], Observation] | None = None  # set while solve_many prepares rules
        self.keep_observations = False  # see `observe` (the web app turns it on)
        self._observed: OrderedDict[tuple, Observation] = OrderedDict()

    # --- looking at the model -------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """The editable layers with their kind, key size, value shape and resolutions."""
        z = self.latents([0])
        aliases = {name: alias for alias, name in layer_aliases(self.model).items()}
        out = []
        for spec in editable_layers(self.model):
            obs = observe(self.model, spec, z)
            wmod = get_module(self.model, spec.weight_module)
            k, v = obs.keys, obs.values
            out.append(LayerInfo(spec.name, type(wmod).__name__, int(k.shape[1]), tuple(v.shape[1:]),
                                 int(k.shape[2]) if k.dim() > 2 else 1, int(v.shape[2]) if v.dim() > 2 else 1,
                                 aliases.get(spec.name, "")))
        return out

    def spec(self, layer: str | LayerSpec) -> LayerSpec:
        return resolve_layer(self.model, layer)

    def latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """Latents (N, ...) of the images named by `seeds`, in this Rewriter's latent scheme."""
        return latents_for(self.latent_scheme, seeds, self.info.latent_shape).to(self.device)

    def sample(self, seeds: Sequence[int]) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] from the current (possibly edited) model (under torchrun, each
        process renders its block of the seeds and every process gets all of them)."""
        return sharded(lambda part: generate(self.model, self.latents(part)), seeds)

    def sample_original(self, seeds: Sequence[int]) -> torch.Tensor:
        """Images from the unedited weights (the stack's W0), without touching the live model."""
        base = self.stack.base_weights()
        if not base:
            return self.sample(seeds)
        from torch.func import functional_call

        def render(part: list[int]) -> torch.Tensor:
            z = self.latents(part)
            with torch.no_grad():
                return torch.cat([functional_call(self.model, base, (z[i : i + 32],), strict=False).cpu() for i in range(0, len(z), 32)])

        return sharded(render, seeds)

    # --- statistics -----------------------------------------------------------------------
    def stats(self, layer: str, config: StatsConfig = StatsConfig(), progress: Callable[[int, int], None] | None = None) -> KeyStats:
        """Key statistics of `layer` on the unedited model, from memory, disk cache or computed."""
        found = self.known_stats(layer, config)
        if distributed.all_agree(found is not None):  # under torchrun every process collects its share, or none does
            return found  # type: ignore[return-value]
        spec = self.spec(layer)
        with self.stack.lifted():  # statistics describe the unedited model
            s = collect_key_stats(self.model, spec, config, latent_shape=self.info.latent_shape, progress=progress)
        if distributed.is_main():
            self.store.save("stats", *stats_cache_key(self.info.model_id, self.info.fingerprint, spec.name, config),
                            {"moment": s.moment}, {"count": s.count})
        self._stats[spec.name, config] = s
        return s

    def known_stats(self, layer: str, config: StatsConfig = StatsConfig()) -> KeyStats | None:
        """The key statistics of `layer` when memory or the disk cache holds them, else None (nothing is computed:
        for checks that must not keep a request waiting)."""
        spec = self.spec(layer)
        if (spec.name, config) not in self._stats:
            found = self.store.load("stats", *stats_cache_key(self.info.model_id, self.info.fingerprint, spec.name, config))
            if found is None:
                return None
            tensors, meta = found
            self._stats[spec.name, config] = KeyStats(spec.name, tensors["moment"], int(meta["count"]), config.num_samples,
                                                      config.stats_seed)
        return self._stats[spec.name, config]

    # --- solving --------------------------------------------------------------------------
    def observe(self, spec: LayerSpec, seed: int) -> Observation:
        """What layer `spec` reads and writes on image `seed` under the live weights. With `keep_observations`
        the last OBSERVED_CACHE are kept, keyed by the stack's weights version, the latent scheme and the
        model's scalar buffers (sampling settings), so repeated solves on the same images (the web app's live
        preview) run the generator once per image; a model drawing random noise is never cached. Callers
        must not modify the tensors."""
        if not self.keep_observations or getattr(self.model, "noise_mode", "const") == "random":
            return observe(self.model, spec, self.latents([seed]))
        settings = tuple(float(b) for b in self.model.buffers() if b.numel() == 1)
        key = (self.stack.version, self.latent_scheme, settings, spec.name, seed)
        if key not in self._observed:
            self._observed[key] = observe(self.model, spec, self.latents([seed]))
            while len(self._observed) > OBSERVED_CACHE:
                self._observed.popitem(last=False)
        self._observed.move_to_end(key)
        return self._observed[key]

    def _selection(self, spec: LayerSpec, sel: Selection, what: str) -> tuple[Observation, torch.Tensor, torch.Tensor]:
        mask = check_mask(sel.mask, self.info.resolution, what).to(self.device)
        z = self.latents([sel.seed])
        if self._recent is None:
            return self.observe(spec, sel.seed), mask, z
        key = (spec.name, sel.seed)  # while many rules are prepared: the last few images seen (a rule's paste is
        if key not in self._recent:  # often its context too), never more, to keep memory at N x key map
            self._recent[key] = observe(self.model, spec, z)
            while len(self._recent) > 4:
                self._recent.pop(next(iter(self._recent)))
        return self._recent[key], mask, z

    def check_edit(self, edit: EditSpec) -> EditSpec:
        """The one check that an edit fits this model: made for it (by fingerprint), an editable
        layer, masks at the image size, image numbers in this Rewriter's latent scheme.
        IncompatibleEdit / InvalidEdit name the loaded model. Returns the edit, with its layer under our
        name if it was given by an alias."""
        check_made_for(edit.name, edit.model, edit.fingerprint, self.info.model_id, self.info.fingerprint)
        names = [s.name for s in editable_layers(self.model)]
        canonical = layer_aliases(self.model).get(edit.layer, edit.layer)
        if canonical not in names:
            raise IncompatibleEdit(f"edit layer {edit.layer!r} is not an editable layer of model "
                                   f"{self.info.model_id!r} ({names})")
        if canonical != edit.layer:
            edit = replace(edit, layer=canonical)  # an alias (the authors' layer name): edits store ours
        if edit.latents != self.latent_scheme:
            raise IncompatibleEdit(f"edit {edit.name or '(unnamed)'} numbers its images with the {edit.latents!r} "
                                   f"latents but this model is loaded with {self.latent_scheme!r}; pass "
                                   f"--latents {edit.latents} (API: Rewriter(..., latents={edit.latents!r}))")
        for role, sel in edit.selections:
            check_mask(sel.mask, self.info.resolution, role)
        return edit

    def directions(self, layer: str, context: Sequence[Selection], keys: KeyConfig = KeyConfig(),
                   stats: StatsConfig = StatsConfig()) -> torch.Tensor:
        """Context directions D (r, C_in) of painted context selections at `layer`: the one place they
        are computed, for solves, search, match overlays and reports alike."""
        return self._directions(layer, context, keys, stats, context_keys)

    def _directions(self, layer: str, context: Sequence[Selection], keys: KeyConfig, stats: StatsConfig,
                    rows: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        spec = self.spec(layer)
        if not context:
            raise InvalidEdit("give at least one context selection")
        obs = [self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(context)]
        k, weights = rows(obs)
        moment = self.stats(spec.name, stats).moment
        wkey = (spec.name, stats, keys.eig_floor)
        if wkey not in self._whiteners:
            self._whiteners[wkey] = zca_whitener(moment, keys.eig_floor)
        return key_directions(k, weights, moment, keys.rank, keys.eig_floor, self._whiteners[wkey])

    def context_spectrum(self, layer: str, context: Sequence[Selection], keys: KeyConfig = KeyConfig(),
                         stats: StatsConfig = StatsConfig()) -> tuple[torch.Tensor, int]:
        """How many directions a context spans: the singular values of its whitened, weighted keys (the matrix
        whose top rows `directions` keeps), largest first, and how many key locations it has."""
        spec = self.spec(layer)
        if not context:
            raise InvalidEdit("give at least one context selection")
        k, weights = context_keys([self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(context)])
        return key_spectrum(k, weights, self.stats(spec.name, stats).moment, keys.eig_floor), int(k.shape[0])

    def edit_directions(self, edit: EditSpec) -> torch.Tensor:
        """The directions an edit defines: its context (or paste region), KeyConfig and StatsConfig; the
        reference method reads its masks as the authors' code does (reference.context_rows)."""
        if edit.update.method == "reference":
            from . import reference

            return self._directions(edit.layer, edit.context_or_paste, edit.keys, edit.stats, reference.context_rows)
        return self.directions(edit.layer, edit.context_or_paste, edit.keys, edit.stats)

    def goal(self, edit: EditSpec) -> Goal:
        """What the solve asks the edited layer to write on the paste image (our methods' goal): the copied
        values composited at the paste location, or the erase target."""
        self.check_edit(edit)
        spec, cfg = self.spec(edit.layer), edit.update
        paste_obs, paste_mask, paste_z = self._selection(spec, edit.paste, "paste")
        if cfg.erase or edit.copy is None:
            ctx = [self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(edit.context_or_paste)]
            units = erase_units(ctx, self.stats(spec.name, edit.stats).moment, cfg.erase_units)
            return erase_goal(self.model, spec, paste_z, paste_obs, paste_mask, units, cfg.tight_paste)
        copy_obs, copy_mask, _ = self._selection(spec, edit.copy, "copy")
        return copy_paste_goal(copy_obs, copy_mask, paste_obs, paste_mask, cfg.tight_paste)

    def render_goal(self, edit: EditSpec) -> torch.Tensor:
        """The goal drawn by the rest of the generator on the paste image (3, H, W), on the CPU: what the edit
        can reach at its layer, to set beside the painted (pixel) composite."""
        values = self.goal(edit).values
        return render_values(self.model, self.spec(edit.layer), self.latents([edit.paste.seed]), values)[0].cpu()

    def search_directions(self, edit: EditSpec) -> torch.Tensor:
        """The directions `search` ranks images by: the edit's query region if it has one (the authors'
        "Match Sel"), else its context; with the edit's KeyConfig and StatsConfig either way."""
        return self.directions(edit.layer, edit.search_selections, edit.keys, edit.stats)

    def solve(self, edit: EditSpec, on_step: StepCallback | None = None) -> SolveResult:
        """Solve an edit against the current model (W0 = the current weight of its layer)."""
        edit = self.check_edit(edit)
        if edit.paste is None:
            raise InvalidEdit(f"edit {edit.name or '(unnamed)'} has no paste selection: it is a search request "
                              "(context and/or query only), which ranks images (`model-rewrite search`) but cannot be applied")
        spec = self.spec(edit.layer)
        dirs = self.edit_directions(edit)
        if edit.update.method == "reference":
            paste_obs, paste_mask, paste_z = self._selection(spec, edit.paste, "paste")
            return self._solve_reference(edit, spec, dirs, paste_obs, paste_mask, paste_z, on_step)
        return solve_update(self.model, spec, dirs, self.goal(edit), edit.update, on_step)

    def edit_goal(self, edit: EditSpec) -> tuple[LayerSpec, torch.Tensor, Goal]:
        """The layer, directions and goal of a (checked) edit on the current model, as its solve sees them."""
        return self.spec(edit.layer), self.edit_directions(edit), self.goal(edit)

    # --- many rules at once (joint.py) ----------------------------------------------------------
    def solve_many(self, edits: Sequence[EditSpec], on_step: StepCallback | None = None,
                   rcond: float | None = None, protect: str = "own") -> list["JointResult"]:
        """Solve the rules at each layer together (joint.solve_joint), one result per layer in network order;
        each layer's group is solved with the (upstream) groups before it in place, as `apply_many` stacks
        them. The model is left as it was. `rcond` and `protect`: see joint.py."""
        from .joint import JOINT_RCOND, check_batch, prepare_rule, solve_joint

        edits = check_batch([self.check_edit(e) for e in edits])
        order = [s.name for s in editable_layers(self.model)]
        layers = sorted(dict.fromkeys(e.layer for e in edits), key=order.index)
        results: list[JointResult] = []
        with self.stack.trial():
            for layer in layers:
                group = [e for e in edits if e.layer == layer]
                spec = self.spec(layer)
                cov = self.stats(layer, group[0].stats).moment
                self._recent = {}
                try:
                    rules = [prepare_rule(e, *self.edit_goal(e)[1:]) for e in group]
                finally:
                    self._recent = None
                results.append(solve_joint(self.model, spec, rules, cov, on_step,
                                           rcond if rcond is not None else JOINT_RCOND, protect))
                self.stack.push(results[-1].delta)
        return results

    def apply_many(self, edits: Sequence[EditSpec], results: Sequence["JointResult"] | None = None,
                   on_step: StepCallback | None = None) -> list[StackEntry]:
        """Solve the edits jointly (unless `results` are given) and push one entry per layer, as one batch that
        undo and redo move together; each entry records its member edits."""
        results = list(results) if results is not None else self.solve_many(edits, on_step)
        if any(getattr(r, "cancelled", False) for r in results):
            raise SolveError("the joint solve was cancelled")
        for r in results:  # solved factors read from a file: made for this model and layer?
            for m in r.members:
                self.check_edit(m.spec)
            if r.delta.param_path != self.spec(r.layer).param_path or any(m.spec.layer != r.layer for m in r.members):
                raise IncompatibleEdit(f"the joint solve for layer {r.layer} changes {r.delta.param_path}, which is not "
                                       f"that layer's weight ({self.spec(r.layer).param_path})")
        return self.stack.push_many([(r.delta, r.name, r.members) for r in results])

    def remove_member(self, entry_id: int, member: int, on_step: StepCallback | None = None) -> StackEntry | None:
        """Take member `member` out of the joint entry `entry_id`: the others are solved again jointly (against
        the model without this entry) and take its place; with none left the entry is removed (None). SolveError
        when `on_step` cancels the solve (the entry stays as it was)."""
        entry = next((e for e in self.stack.entries if e.id == entry_id), None)
        if entry is None or not entry.members:
            raise InvalidEdit(f"no active joint edit has id {entry_id}")
        if not 0 <= member < len(entry.members):
            raise InvalidEdit(f"joint edit {entry_id} has members 0..{len(entry.members) - 1}, not {member}")
        rest = [m.spec for i, m in enumerate(entry.members) if i != member]
        if not rest:
            self.stack.remove(entry_id)
            return None
        with self.stack.without(entry_id):
            (result,) = self.solve_many(rest, on_step)
        if result.cancelled:
            raise SolveError("the joint solve was cancelled")
        return self.stack.replace(entry_id, result.delta, result.name, result.members)

    def _solve_reference(self, edit: EditSpec, spec: LayerSpec, dirs: torch.Tensor, paste_obs: Observation,
                         paste_mask: torch.Tensor, paste_z: torch.Tensor, on_step: StepCallback | None) -> SolveResult:
        from . import reference

        if edit.update.erase or edit.copy is None:
            ctx = [self._selection(spec, s, f"context[{i}]")[:2] for i, s in enumerate(edit.context_or_paste)]
            units = reference.erase_units(ctx, self.stats(spec.name, edit.stats).moment, edit.update.erase_units)
            goal = reference.erase_goal(self.model, spec, paste_z, paste_obs, units)
        else:
            copy_obs, copy_mask, _ = self._selection(spec, edit.copy, "copy")
            goal = reference.copy_paste_goal(copy_obs, copy_mask, paste_obs, paste_mask)
        return reference.solve_reference(self.model, spec, dirs, goal, paste_obs, steps=reference.REFERENCE_STEPS,
                                         on_step=on_step)

    def apply(self, edit: EditSpec, delta: LowRankDelta | None = None, on_step: StepCallback | None = None) -> StackEntry:
        """Solve the edit (unless its delta is given) and push it on the edit stack."""
        edit = self.check_edit(edit)
        if delta is None:
            result = self.solve(edit, on_step)
            if result.cancelled:
                raise SolveError("the edit was cancelled")
            delta = result.delta
        elif delta.param_path != self.spec(edit.layer).param_path:
            raise InvalidEdit(f"the saved factors are for {delta.param_path}, not layer {edit.layer}")
        return self.stack.push(delta, edit.name, edit)

    def suggest(self, edit: EditSpec, **options: Any) -> list["Candidate"]:
        """Layers and ranks for `edit`, best first, each solved and scored on held-out images; the model is
        left as it was. Options: layers, ranks, refine, seeds, config, progress (see `suggest.suggest`)."""
        from .suggest import suggest

        return suggest(self, edit, **options)

    def heat(self, layer: str, dirs: torch.Tensor, seeds: Sequence[int], which: int = 0) -> torch.Tensor:
        """Heat maps (N, Hk, Wk) of direction `which` on the images `seeds`, on the CPU like `sample`."""
        spec = self.spec(layer)

        def heat(part: list[int]) -> torch.Tensor:
            keys = key_maps(self.model, spec, self.latents(part))
            return heat_maps(keys, dirs.to(keys.device, torch.float32), which).cpu()

        return sharded(heat, seeds)

    def new_edit(self, layer: str, paste: Selection | None, copy: Selection | None = None, context: Sequence[Selection] = (),
                 update: UpdateConfig = UpdateConfig(), stats: StatsConfig = StatsConfig(), name: str = "",
                 keys: KeyConfig = KeyConfig(), query: Selection | None = None) -> EditSpec:
        """An EditSpec for this model (id, fingerprint and latent scheme filled in; `layer` may be an alias,
        the edit stores the layer's own name)."""
        return EditSpec(self.info.model_id, self.info.fingerprint, self.spec(layer).name, paste, copy, tuple(context),
                        update, stats, name, keys=keys, query=query, latents=self.latent_scheme)

