"""The joint solve: many edits at one layer fitted together, W = W0 + L D with D every rule's context
directions stacked.

- **Directions.** The rules' directions are stacked in order; a direction is kept when at least `rcond` of its
  whitened length (q = C^1/2 d, the metric in which the directions were found) is new to the ones before it,
  so the constraint space is well-conditioned; the kept rows are orthonormalised in order (Gram-Schmidt), so a
  rule whose directions are orthogonal to the others' keeps them exactly. Rank = the sum of the rules' ranks,
  less the directions dropped (never more than C_in).
- **Loss.** Each rule's loss is the single solve's (`solve._goal_loss`): the mean error to its goal inside its
  pasted box plus `preserve` x the mean change of its paste image outside the box, where the outside leaves
  out the boxes of other rules pasted on the same image (those are theirs to change). The joint loss is the
  sum over rules, so every rule's goal box holds every rule's change there, and a batch of one rule solves
  exactly as `solve.solve_update`. Outside its box a paste image is held (`protect`):
  "own" (default): against the change along its own rule's directions, W0 + L D P_i with P_i = D_i^T D_i, as
  alone; other rules stay free to act where their context appears on it.
  "all": against every rule's change. On the world benchmark (6 rules, 150 held-out seeds, closed form and
  refined) "all" lowered every rule's success further (e.g. dome_to_tree 0.60 -> 0.40 of alone) for less
  collateral, because it forbids each rule its context on the other rules' paste images; hence "own".
- **Closed form** (jointform.py): least squares on the layer's linear output, assembled in key space.
- **Refinement**: Adam on the factor through the block's real output (all paste images per step, in chunks
  whose gradients add up), warm-started from the closed form, keeping the best iterate, as `update.optimize_factor`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .config import UpdateConfig
from .edits import EditSpec
from .errors import InvalidEdit, SolveError
from .goals import Goal
from .hooks import call_with_weight, get_module, override_forward
from .jointform import closed_form_factor, held_keys, holds_own, own_projectors
from .layers import LayerSpec
from .masks import Box
from .solve import StepCallback, single_thread
from .stack import Member, joint_name
from .update import LowRankDelta, adam_step, delta_from_factors

JOINT_RCOND = 1e-2  # keep a direction when at least this fraction of its whitened length is new
REFINE_CHUNK = 32  # paste images per forward/backward of the refinement
REFINE_CACHE_BYTES = 512 * 2**20  # the refinement keeps unedited outputs between steps up to this size
SHARED_UPDATE = ("method", "steps", "lr", "loss", "warm_start", "ridge")  # one value per joint solve


@dataclass
class JointRule:
    """One rule as the joint solve needs it: its key map, the block's inputs and its goal inside the box
    (memory: a key map and a box per rule; the unedited outputs are recomputed when needed)."""

    spec: EditSpec
    dirs: torch.Tensor  # (r, C_in): the rule's own directions
    args: tuple[Any, ...]  # the block's inputs on the paste image
    kwargs: dict[str, Any]
    keys: torch.Tensor  # (1, C_in, *key grid)
    box: Box
    residual: torch.Tensor  # (C_out, bh, bw): goal minus unedited linear output, in the box
    target: torch.Tensor  # (C_out, bh, bw): the goal after the tail, in the box
    grid: tuple[int, int]  # value grid (Hv, Wv)
    excluded: tuple[Box, ...] = ()  # other rules' boxes on the same paste image

    @property
    def config(self) -> UpdateConfig:
        return self.spec.update


def prepare_rule(spec: EditSpec, dirs: torch.Tensor, goal: Goal) -> JointRule:
    """A JointRule from an edit's directions and goal (Rewriter.edit_goal)."""
    if goal.values.dim() != 4:
        raise SolveError(f"the joint solve needs a layer with a 2-D value map; {spec.layer} writes "
                         f"{tuple(goal.values.shape)}")
    y0, y1, x0, x1 = goal.box
    crop = lambda t: t[0, :, y0:y1, x0:x1].detach().clone()  # noqa: E731
    return JointRule(spec, dirs, goal.obs.args, goal.obs.kwargs, goal.obs.keys, goal.box,
                     crop(goal.linear - goal.obs.linear), crop(goal.values), tuple(goal.values.shape[2:]))


def with_exclusions(rules: Sequence[JointRule]) -> list[JointRule]:
    """Each rule with the boxes of the other rules pasted on the same image."""
    out = []
    for i, r in enumerate(rules):
        others = tuple(o.box for j, o in enumerate(rules) if j != i and o.spec.paste.seed == r.spec.paste.seed)
        out.append(JointRule(**{**r.__dict__, "excluded": others}))
    return out


def weight_maps(rules: Sequence[JointRule]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rule and value position: (inside weight, outside weight) maps (N, Hv, Wv) float64, so that a rule's
    loss is sum(inside * err) + sum(outside * change): 1/n_in in its box, preserve/n_keep where it keeps its
    paste image, 0 in other rules' boxes on the same image."""
    hv, wv = rules[0].grid
    w_in = torch.zeros(len(rules), hv, wv, dtype=torch.float64)
    w_out = torch.zeros_like(w_in)
    for i, r in enumerate(rules):
        own = torch.zeros(hv, wv, dtype=torch.bool)
        y0, y1, x0, x1 = r.box
        own[y0:y1, x0:x1] = True
        keep = ~own
        for b0, b1, c0, c1 in r.excluded:
            keep[b0:b1, c0:c1] = False
        w_in[i][own] = 1.0 / int(own.sum())
        n_keep = int(keep.sum())
        if r.config.preserve > 0 and n_keep > 0:
            w_out[i][keep] = r.config.preserve / n_keep
    return w_in, w_out


def joint_directions(dirs: Sequence[torch.Tensor], cov: torch.Tensor, eig_floor: float = 1e-6,
                     rcond: float = JOINT_RCOND) -> tuple[torch.Tensor, list[int]]:
    """Stacked directions made well-conditioned: (D (k, C_in) with orthonormal rows, indices of the kept rows).

    A row is kept when the part of its whitened image q = C^1/2 d that is orthogonal to the kept rows' is at
    least `rcond` of |q|; the kept rows are then orthonormalised in order (Gram-Schmidt, twice)."""
    rows = torch.cat([d.to(torch.float64) for d in dirs])
    c = cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh((c + c.T) / 2)
    floor = eig_floor * float(evals.max().clamp_min(1e-300))
    white = rows @ ((evecs * evals.clamp_min(floor).sqrt()) @ evecs.T)
    kept = _gram_schmidt(white, rcond)
    basis = rows[kept]
    out = basis[_gram_schmidt(basis, 0.0)]  # all of them: just to orthonormalise below
    return _orthonormal(out).to(dirs[0].dtype), kept


def _gram_schmidt(rows: torch.Tensor, rcond: float) -> list[int]:
    """Indices of the rows whose residual against the earlier kept rows is >= rcond of their length."""
    basis = torch.zeros_like(rows)
    kept: list[int] = []
    for j, q in enumerate(rows):
        n0 = float(q.norm())
        if n0 == 0.0:
            continue
        b = basis[: len(kept)]
        res = q - b.T @ (b @ q)
        res = res - b.T @ (b @ res)
        n = float(res.norm())
        if n > 0 and n >= rcond * n0 and len(kept) < rows.shape[1]:
            basis[len(kept)] = res / n
            kept.append(j)
    return kept


def _orthonormal(rows: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(rows)
    for j, d in enumerate(rows):
        b = out[:j]
        res = d - b.T @ (b @ d)
        res = res - b.T @ (b @ res)
        out[j] = res / res.norm()
    return out


def edit_content(spec: EditSpec) -> str:
    """An edit's content without its name and note, to find the same rule given twice."""
    import json

    d = spec.to_dict()
    d.pop("name"), d.pop("note")
    return json.dumps(d, sort_keys=True)


def check_batch(edits: Sequence[EditSpec]) -> list[EditSpec]:
    """One-line errors for a batch that cannot be solved together: empty, made for different models, the
    same rule twice, or the reference method (which solves one edit the authors' way)."""
    edits = list(edits)
    if not edits:
        raise InvalidEdit("give at least one edit to solve")
    seen: dict[str, int] = {}
    for i, e in enumerate(edits):
        if e.fingerprint != edits[0].fingerprint:
            raise InvalidEdit(f"edit {i} ({e.name or 'unnamed'}) was made for model {e.model!r} (fingerprint "
                              f"{e.fingerprint}) but edit 0 for {edits[0].model!r} ({edits[0].fingerprint}); "
                              "rules solved together belong to one model")
        if e.update.method == "reference":
            raise InvalidEdit(f"edit {i} ({e.name or 'unnamed'}) uses method 'reference', which solves one edit "
                              "the authors' way; the joint solve takes 'optimize' or 'closed_form'")
        key = edit_content(e)
        if key in seen:
            raise InvalidEdit(f"edits {seen[key]} and {i} are the same rule (same layer, selections and settings); "
                              "give each rule once")
        seen[key] = i
    return edits


def check_group(specs: Sequence[EditSpec]) -> None:
    """One-line errors for rules that cannot share a solve: other layers, methods or solve settings."""
    first = specs[0]
    for i, s in enumerate(specs[1:], 1):
        if s.layer != first.layer:
            raise InvalidEdit(f"edit {i} ({s.name or 'unnamed'}) is at layer {s.layer}, not {first.layer}; a joint "
                              "solve holds the rules of one layer (Rewriter.solve_many groups them by layer)")
        for name in SHARED_UPDATE:
            if getattr(s.update, name) != getattr(first.update, name):
                raise InvalidEdit(f"edit {i} ({s.name or 'unnamed'}) has UpdateConfig.{name}={getattr(s.update, name)!r} "
                                  f"but edit 0 has {getattr(first.update, name)!r}; rules solved together share it")
        if s.stats != first.stats or s.keys.eig_floor != first.keys.eig_floor:
            raise InvalidEdit(f"edit {i} ({s.name or 'unnamed'}) uses other key statistics or eig_floor than edit 0; "
                              "rules solved together share them")


@dataclass
class JointResult:
    """A joint solve of the rules at one layer: the delta, its members and how it went."""

    layer: str
    delta: LowRankDelta
    members: tuple[Member, ...]
    requested_rank: int  # the sum of the rules' ranks (delta.rank is what was kept)
    closed_form_loss: float
    goal_loss: float
    rule_losses: list[float]  # each rule's own loss at the result (they add up to goal_loss)
    closed_form_seconds: float
    refine_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    cancelled: bool = False

    @property
    def name(self) -> str:
        return joint_name(self.members)


def solve_joint(model: nn.Module, spec: LayerSpec, rules: Sequence[JointRule], cov: torch.Tensor,
                on_step: StepCallback | None = None, rcond: float = JOINT_RCOND, protect: str = "own") -> JointResult:
    """Fit one factor for every rule at `spec`'s layer (the model's current weight is W0). `protect`: each
    paste image is kept outside its box against the change along its own rule's directions ("own") or
    against every rule's change ("all"); see the module's docstring."""
    check_group([r.spec for r in rules])
    rules = with_exclusions(rules)
    cfg = rules[0].config
    weight_module = get_module(model, spec.weight_module)
    w0 = getattr(weight_module, spec.param_name).detach()
    t0 = time.perf_counter()
    dirs, _ = joint_directions([r.dirs for r in rules], cov, rules[0].spec.keys.eig_floor, rcond)
    dirs = dirs.to(w0.dtype)
    w_in, w_out = weight_maps(rules)
    factor0 = closed_form_factor(weight_module, spec, w0, dirs, rules, w_in, w_out, cfg.ridge, protect)
    cf_seconds = time.perf_counter() - t0
    refine = JointRefinement(model, spec, w0, dirs, rules, w_in, w_out, holds_own(protect, len(rules)))
    cf_rule = refine.rule_losses(factor0)
    members = tuple(Member(r.spec, r.dirs) for r in rules)
    requested = sum(int(r.dirs.shape[0]) for r in rules)
    result = JointResult(spec.name, LowRankDelta(spec.param_path, spec.key_axis, factor0, dirs), members, requested,
                         sum(cf_rule), sum(cf_rule), cf_rule, cf_seconds)
    if cfg.method == "optimize" and cfg.steps > 0:
        t1 = time.perf_counter()
        start = factor0 if cfg.warm_start else torch.zeros_like(factor0)
        with single_thread() if len(rules) <= 8 else nullcontext():
            factor, losses, cancelled = refine.optimize(start, cfg.steps, cfg.lr, on_step)
        rule = refine.rule_losses(factor)
        result = JointResult(spec.name, LowRankDelta(spec.param_path, spec.key_axis, factor, dirs), members, requested,
                             sum(cf_rule), sum(rule), rule, cf_seconds, time.perf_counter() - t1, losses, cancelled)
    if not result.delta.is_finite():
        raise SolveError("the joint update holds NaN or infinite values; lower the learning rate or steps")
    return result


def _take(value: Any, i: int, n: int) -> Any:
    """Image i of a block input batched by `_cat` over n images (shared inputs as they are)."""
    return value[i : i + 1] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n else value


def _cat(values: Sequence[Any]) -> Any:
    """One batch of per-image block inputs: tensors with a batch of one are concatenated, the rest shared."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0 and first.shape[0] == 1:
        return torch.cat(list(values))
    return first


class JointRefinement:
    """The joint loss through the block's real output, in chunks of paste images, and its Adam loop."""

    def __init__(self, model: nn.Module, spec: LayerSpec, w0: torch.Tensor, dirs: torch.Tensor,
                 rules: Sequence[JointRule], w_in: torch.Tensor, w_out: torch.Tensor, own: bool = False) -> None:
        self.block, self.wm = get_module(model, spec.name), get_module(model, spec.weight_module)
        self.spec, self.w0, self.dirs, self.rules = spec, w0, dirs, list(rules)
        self.w_in, self.w_out = w_in.to(w0), w_out.to(w0)
        self.loss = rules[0].config.loss
        self.chunks = [(lo, min(lo + REFINE_CHUNK, len(rules))) for lo in range(0, len(rules), REFINE_CHUNK)]
        per_rule = 4 * (3 * rules[0].target.shape[0] * rules[0].grid[0] * rules[0].grid[1] + dirs.shape[0] * rules[0].keys[0, 0].numel())
        self.cache: dict[int, tuple] | None = {} if per_rule * len(rules) <= REFINE_CACHE_BYTES else None
        self.fast: bool | None = None
        self.own = own  # the outside term sees only the change along each rule's own directions

    def _fixed(self, lo: int, hi: int) -> tuple:
        """Inputs, projected keys, unedited linear output, loss targets and weights of rules lo..hi."""
        if self.cache is not None and lo in self.cache:
            return self.cache[lo]
        chunk = self.rules[lo:hi]
        with torch.no_grad():
            args = tuple(_cat([r.args[j] for r in chunk]) for j in range(len(chunk[0].args)))
            kwargs = {k: _cat([r.kwargs[k] for r in chunk]) for k in chunk[0].kwargs}
            keys = torch.cat([r.keys for r in chunk])
            lin0 = call_with_weight(self.wm, self.spec.param_name, self.w0, keys)
            target = self.block(*args, **kwargs).clone()  # the unedited values; the goal goes in the boxes
            for i, r in enumerate(chunk):
                y0, y1, x0, x1 = r.box
                target[i, :, y0:y1, x0:x1] = r.target
            proj = torch.einsum("rc,bc...->br...", self.dirs, keys)
            own = own_projectors(self.dirs, chunk) if self.own and not self.fast else None  # per-image weights
            held = held_keys(self.dirs, chunk, keys) if self.own else proj
            shape = list(self.w0.shape)
            shape[self.spec.key_axis] = self.dirs.shape[0]
            offset = call_with_weight(self.wm, self.spec.param_name, self.w0.new_zeros(shape), proj[:1])
        fixed = (args, kwargs, lin0, target, proj, offset, self.w_in[lo:hi, None], self.w_out[lo:hi, None], held, own)
        if self.cache is not None:
            self.cache[lo] = fixed
        return fixed

    def _output(self, factor: torch.Tensor, fixed: tuple, fast: bool, held: bool = False) -> torch.Tensor:
        """The block's output with W0 + L D, or (held) with W0 + L D P_i on image i (its own directions)."""
        args, kwargs, lin0, _, proj, offset, _, _, held_proj, own = fixed
        weight = self.w0 + delta_from_factors(factor, self.dirs, self.spec.key_axis)
        if held and not fast:  # one weight per image: the block runs image by image
            return torch.cat([call_with_weight(self.block, self.spec.weight_path,
                                               self.w0 + delta_from_factors(factor, own[i], self.spec.key_axis),
                                               *(_take(a, i, len(own)) for a in args),
                                               **{k: _take(v, i, len(own)) for k, v in kwargs.items()})
                              for i in range(len(own))])
        if not fast:
            return call_with_weight(self.block, self.spec.weight_path, weight, *args, **kwargs)
        change = call_with_weight(self.wm, self.spec.param_name, factor, held_proj if held else proj) - offset
        with override_forward(self.wm, lambda *_a, **_k: lin0 + change):
            return call_with_weight(self.block, self.spec.weight_path, weight, *args, **kwargs)

    def _per_rule(self, factor: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        fixed = self._fixed(lo, hi)
        if self.fast is None:  # the factored path must match the full layer, checked once on a random factor
            probe = torch.randn(factor.shape, generator=torch.Generator().manual_seed(0), dtype=factor.dtype) * self.w0.std()
            try:
                with torch.no_grad():
                    want, got = self._output(probe, fixed, False), self._output(probe, fixed, True)
                self.fast = want.shape == got.shape and float((want - got).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6
            except Exception:  # noqa: BLE001  a module that does not take r channels keeps the full layer
                self.fast = False
        pred = self._output(factor, fixed, self.fast)
        target, w_in, w_out = fixed[3], fixed[6], fixed[7]
        err = (lambda d: d.abs() if self.loss == "l1" else d**2)  # noqa: E731
        if not self.own:
            return (err(pred - target) * (w_in + w_out)).flatten(1).sum(1) / pred.shape[1]
        held = self._output(factor, fixed, self.fast, held=True)
        return ((err(pred - target) * w_in).flatten(1).sum(1) + (err(held - target) * w_out).flatten(1).sum(1)) / pred.shape[1]

    def rule_losses(self, factor: torch.Tensor) -> list[float]:
        with torch.no_grad():
            return [float(v) for lo, hi in self.chunks for v in self._per_rule(factor, lo, hi)]

    def optimize(self, start: torch.Tensor, steps: int, lr: float, on_step: StepCallback | None
                 ) -> tuple[torch.Tensor, list[float], bool]:
        """Adam on the factor (update.adam_step), best iterate kept; on_step(step, loss) may cancel."""
        factor = start.detach().clone().requires_grad_(True)
        m, v = torch.zeros_like(factor), torch.zeros_like(factor)
        best, best_loss, losses = start.detach().clone(), float("inf"), []
        for step in range(steps + 1):
            grad, total = torch.zeros_like(factor), 0.0
            for lo, hi in self.chunks:
                if step == steps:
                    with torch.no_grad():
                        total += float(self._per_rule(factor, lo, hi).sum())
                    continue
                loss = self._per_rule(factor, lo, hi).sum()
                grad += torch.autograd.grad(loss, factor)[0]
                total += float(loss.detach())
            losses.append(total)
            if total < best_loss:
                best_loss, best = total, factor.detach().clone()
            stop = bool(on_step(step, total)) if on_step is not None else False
            if step == steps or stop:
                return best, losses, stop
            with torch.no_grad():
                adam_step(factor, grad, m, v, step + 1, lr)
        return best, losses, False

