"""Exact-label benchmark of rule rewriting against fine-tuning baselines on the procedural world.

A generator trained on `model_rewrite.world` scenes is edited three ways, each with a known truth read by the
world's nearest-colour labeller:

1. `dome_to_tree`: domes (a kind of tower top) become tree tops (canopy);
2. `erase_windows`: windows are removed, leaving plain wall (the erase variant);
3. `roof_to_dome`: pointed roofs become domes.

Every method runs at every layer of a sweep (default b8, b16, b32); fine-tuning all weights (no layer) and
`suggest` (which picks the layer and rank itself) run once per edit. Over held-out seeds:
- success = fraction of the context class's pixels in the unedited image that carry the target label in the
  edited image (pooled over all pixels of all images);
- object success = fraction of the context objects (world_metrics: components of the mode-filtered labels)
  of which more than half the pixels carry the target label after the edit (mode filtered too);
- label collateral = fraction of the pixels outside the context (dilated by `--dilate` pixels) whose label changed;
- pixel collateral = mean absolute change (0..255 levels) of those pixels;
- the library's quality report (transfer, paste fidelity) on the first `--quality-seeds` held-out seeds, to
  check it against the exact figures (world_report.analyse).

    nice -n 10 python benchmarks/world/bench_world.py --seeds 500            # the sweep (README tables)
    python benchmarks/world/bench_world.py --seeds 16 --steps-scale 0.01 --out /tmp/w   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from model_rewrite import reference
from model_rewrite.config import KeyConfig, StatsConfig, UpdateConfig
from model_rewrite.directions import key_directions
from model_rewrite.edits import EditSpec, Selection
from model_rewrite.goals import context_keys, copy_paste_goal, erase_goal, erase_units, observe
from model_rewrite.hooks import call_with_weight, get_module
from model_rewrite.masks import check_mask
from model_rewrite.quality import quality_report
from model_rewrite.render import generate, to_uint8
from model_rewrite.rewrite import Rewriter
from model_rewrite.solve import solve_update
from model_rewrite.update import LowRankDelta, factor_from_delta
from world import CLASS_INDEX, CLASSES, colour_labels, label_fractions, rule_statistics, scenes_from_seeds
from world_metrics import (MIN_OBJECT_PIXELS, MODE_SIZE, OBJECT_HIT_FRACTION, bbox, dilate, fast_labels, largest_component,
                           mode_filter, object_success, objects)
from world_report import analyse, outline, write_outputs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_MODEL = HERE / "world_gan.safetensors"
DEFAULT_DISC = HERE / "world_disc.safetensors"
EVAL_SEED0 = 100_000  # held-out evaluation images are seeds EVAL_SEED0 .. EVAL_SEED0 + seeds - 1
SUGGEST_SEED0 = 200_000  # suggest scores its candidates on seeds SUGGEST_SEED0 .. SUGGEST_SEED0 + suggest_seeds - 1
POOL_SEED0 = 0  # context, copy and paste examples are picked from seeds POOL_SEED0 .. POOL_SEED0 + pool - 1


@dataclass(frozen=True)
class EditTask:
    name: str
    context: str  # class whose pixels the rule applies to
    target: str  # class the context pixels should become
    copy: str | None  # class to copy the look from (None: erase variant)
    sibling: str  # a similar class the rule should NOT reach (specificity)


TASKS = (
    EditTask("dome_to_tree", "dome", "canopy", "canopy", "roof"),
    EditTask("erase_windows", "window", "wall", None, "door"),
    EditTask("roof_to_dome", "roof", "dome", "dome", "dome"),
)


# --- masks from label maps --------------------------------------------------------------------------
def copy_and_paste_boxes(copy_comp: np.ndarray, paste_comp: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular copy and paste masks (H, W) float of one size, bottoms aligned on their objects.

    The copy box is the copied object's box grown (upwards and sideways, around its bottom centre) to cover the
    pasted-over object's size too, so the copied look (with its own background) replaces the whole object.
    """
    cy0, cy1, cx0, cx1 = bbox(copy_comp)
    py0, py1, px0, px1 = bbox(paste_comp)
    h = max(cy1 - cy0, py1 - py0)
    w = max(cx1 - cx0, px1 - px0)

    def box(y1: int, xc: float) -> np.ndarray:
        m = np.zeros((size, size), np.float32)
        x0 = int(round(xc - w / 2))
        x0 = min(max(x0, 0), size - w)
        y0 = max(y1 - h, 0)
        m[y0:y0 + h, x0:x0 + w] = 1.0
        return m

    return box(cy1, (cx0 + cx1) / 2), box(py1, (px0 + px1) / 2)


# --- edits as weight changes --------------------------------------------------------------------------
@dataclass
class Prepared:
    """The inputs every method shares for one edit."""

    task: EditTask
    context: list[Selection]
    copy: Selection | None
    paste: Selection
    rgb_target: torch.Tensor  # (1, 3, H, W) copy-pasted RGB target on the paste image (fine-tune-all baseline)
    rgb_weight: torch.Tensor  # (1, 1, H, W) 1 everywhere (the whole image is the target)


def prepare(rw: Rewriter, task: EditTask, pool_labels: np.ndarray, pool_images: np.ndarray, n_context: int,
            min_pixels: int) -> Prepared:
    """Pick context/copy/paste examples from the pool by the labeller (no hand-picking)."""
    size = pool_labels.shape[-1]
    ctx_counts = (pool_labels == CLASS_INDEX[task.context]).reshape(len(pool_labels), -1).sum(1)
    order = [int(i) for i in np.argsort(-ctx_counts, kind="stable") if ctx_counts[i] >= min_pixels]
    if len(order) < n_context + 1:
        raise RuntimeError(f"{task.name}: only {len(order)} pool images show >= {min_pixels} {task.context} pixels; "
                           "enlarge --pool or lower --min-context-pixels")
    # spread the picks over the ranked list instead of taking only the largest instances
    picks = [order[i] for i in np.linspace(0, len(order) - 1, n_context + 1).round().astype(int)]
    paste_i, ctx_is = picks[0], picks[1:]
    ctx = [Selection(POOL_SEED0 + i, torch.from_numpy(dilate(pool_labels[i] == CLASS_INDEX[task.context], 1).astype(np.float32)))
           for i in [paste_i] + ctx_is[:-1]]
    paste_comp = largest_component(pool_labels[paste_i] == CLASS_INDEX[task.context])
    paste_img = pool_images[paste_i].astype(np.float32)
    if task.copy is None:
        paste_mask = dilate(pool_labels[paste_i] == CLASS_INDEX[task.context], 1).astype(np.float32)
        copy_sel = None
        # RGB target: context pixels (dilated) painted with the median colour of the target class in that image
        fill = np.median(paste_img[pool_labels[paste_i] == CLASS_INDEX[task.target]], axis=0)
        target = np.where(paste_mask[..., None] > 0, fill, paste_img)
    else:
        cp_counts = np.array([largest_component(lab == CLASS_INDEX[task.copy]).sum() if (lab == CLASS_INDEX[task.copy]).sum() >= min_pixels else 0
                              for lab in pool_labels[:200]])
        copy_i = int(np.argsort(-cp_counts, kind="stable")[min(3, int((cp_counts > 0).sum()) - 1)]) if (cp_counts > 0).any() else -1
        if copy_i < 0:
            raise RuntimeError(f"{task.name}: no pool image shows a {task.copy} to copy")
        copy_comp = largest_component(pool_labels[copy_i] == CLASS_INDEX[task.copy])
        copy_mask, paste_mask = copy_and_paste_boxes(copy_comp, paste_comp, size)
        copy_sel = Selection(POOL_SEED0 + copy_i, torch.from_numpy(copy_mask))
        cy0, cy1, cx0, cx1 = bbox(copy_mask > 0)
        py0, py1, px0, px1 = bbox(paste_mask > 0)
        target = paste_img.copy()
        target[py0:py1, px0:px1] = pool_images[copy_i, cy0:cy1, cx0:cx1]
    paste = Selection(POOL_SEED0 + paste_i, torch.from_numpy(np.ascontiguousarray(paste_mask)))
    rgb = torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return Prepared(task, ctx, copy_sel, paste, rgb, torch.ones(1, 1, size, size))


def build_goal(rw: Rewriter, layer: str, prep: Prepared, cfg: UpdateConfig, cov: torch.Tensor, key_cfg: KeyConfig = KeyConfig()):
    """Directions and goal exactly as `Rewriter.solve` builds them, but with any second moment `cov`."""
    spec = rw.spec(layer)
    res = rw.info.resolution

    def sel(s: Selection, what: str):
        z = rw.latents([s.seed])
        return observe(rw.model, spec, z), check_mask(s.mask, res, what), z

    ctx = [sel(s, "context")[:2] for s in prep.context]
    keys, weights = context_keys(ctx)
    dirs = key_directions(keys, weights, cov, key_cfg.rank, key_cfg.eig_floor)
    paste_obs, paste_mask, paste_z = sel(prep.paste, "paste")
    if prep.copy is None:
        units = erase_units(ctx, cov, cfg.erase_units)
        goal = erase_goal(rw.model, spec, paste_z, paste_obs, paste_mask, units, cfg.tight_paste)
    else:
        copy_obs, copy_mask, _ = sel(prep.copy, "copy")
        goal = copy_paste_goal(copy_obs, copy_mask, paste_obs, paste_mask, cfg.tight_paste)
    return spec, dirs, goal


def finetune_layer(rw: Rewriter, layer: str, prep: Prepared, cfg: UpdateConfig, cov: torch.Tensor) -> torch.Tensor:
    """Baseline: the one layer's full weight fine-tuned to the same goal (L1 in the pasted box), no rank limit.

    Returns the dense weight change."""
    spec, _, goal = build_goal(rw, layer, prep, cfg, cov)
    wmod = get_module(rw.model, spec.weight_module)
    block = get_module(rw.model, spec.name)
    w0 = getattr(wmod, spec.param_name).detach()
    y0, y1, x0, x1 = goal.box
    inside = torch.zeros(goal.values.shape[2:], dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    delta = torch.zeros_like(w0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    best, best_loss = delta.detach().clone(), float("inf")
    for _ in range(cfg.steps + 1):
        out = call_with_weight(block, spec.weight_path, w0 + delta, *goal.obs.args, **goal.obs.kwargs)
        loss = (out - goal.values).abs()[..., inside].mean()
        if cfg.preserve > 0:
            loss = loss + cfg.preserve * (out - goal.obs.values).abs()[..., ~inside].mean()
        value = float(loss.detach())
        if value < best_loss:
            best_loss, best = value, delta.detach().clone()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return best


class _Features(nn.Module):
    """Feature term of the fine-tune-all baseline: the trained world discriminator's first three blocks
    (a stand-in for LPIPS, which has no network for this world), or a fixed random conv net without one."""

    def __init__(self, disc_path: Path | None) -> None:
        super().__init__()
        if disc_path is not None and disc_path.is_file():
            from safetensors.torch import load_file

            import importlib.util

            spec = importlib.util.spec_from_file_location("_train_world_gan", HERE / "train_world_gan.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules.setdefault("_train_world_gan", mod)
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            sd = load_file(str(disc_path))
            ndf = int(sd["main.0.weight"].shape[0])
            d = mod.WorldDiscriminator(ndf)
            d.load_state_dict(sd)
            self.net = d.main[:8].eval()
            self.kind = "world discriminator blocks 1-3"
        else:
            g = torch.Generator().manual_seed(0)
            convs = [nn.Conv2d(3, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 4, 2, 1), nn.LeakyReLU(0.2)]
            for c in convs:
                if isinstance(c, nn.Conv2d):
                    c.weight.data = torch.randn(c.weight.shape, generator=g) * (2.0 / c.weight[0].numel()) ** 0.5
                    c.bias.data.zero_()
            self.net = nn.Sequential(*convs).eval()
            self.kind = "fixed random conv features"
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def finetune_all(model: nn.Module, z: torch.Tensor, prep: Prepared, steps: int, lr: float, feat: _Features,
                 feat_weight: float) -> nn.Module:
    """Baseline: every generator weight fine-tuned on the copy-pasted RGB target (L1 + feat_weight x feature L1).

    BatchNorm stays in eval mode (running statistics fixed). Returns the fine-tuned copy."""
    g = copy.deepcopy(model).eval()
    params = [p for p in g.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    target_feat = feat(prep.rgb_target)
    for _ in range(steps):
        out = g(z)
        loss = (out - prep.rgb_target).abs().mean() + feat_weight * (feat(out) - target_feat).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return g


def full_rank_delta(rw: Rewriter, layer: str, dense: torch.Tensor, d: torch.Tensor) -> LowRankDelta:
    """A dense weight change written exactly in an orthonormal basis of the whole key space whose first row is
    the context direction `d`, so the edit stack can hold it and the quality report's heat (direction 0) is
    the same context direction the low-rank edits use."""
    spec = rw.spec(layer)
    c_in = dense.shape[spec.key_axis]
    d64 = d.detach().to(torch.float64).reshape(-1)
    q, _ = torch.linalg.qr(torch.cat([d64[None], torch.eye(c_in, dtype=torch.float64)]).T)  # (C_in, C_in)
    if float(q[:, 0] @ d64) < 0:
        q[:, 0] = -q[:, 0]
    basis = q.T.to(dense.dtype).contiguous()
    return LowRankDelta(spec.param_path, spec.key_axis, factor_from_delta(dense, basis, spec.key_axis), basis)


def rank_method(rank: int) -> str:
    """The name of our default solve at `rank` (one of the (layer, rank) configurations `suggest` chooses from)."""
    return "ours_rank1_default" if rank == 1 else f"ours_rank{rank}"


def layer_methods(args: argparse.Namespace) -> dict[str, dict]:
    """The methods run at every layer of the sweep."""
    s = args.steps_scale
    default_steps, long_steps = max(1, round(UpdateConfig().steps * s)), max(1, round(2000 * s))
    methods: dict[str, dict] = {"ours_rank1_closed_form": {"cfg": UpdateConfig(method="closed_form")}}
    for r in args.ranks:
        methods[rank_method(r)] = {"cfg": UpdateConfig(steps=default_steps), "keys": KeyConfig(rank=r)}
    methods["reference_authors"] = {"cfg": UpdateConfig(method="reference")}
    methods["ablation_identity_cov"] = {"cfg": UpdateConfig(steps=default_steps), "identity": True}
    methods["finetune_layer_full_rank"] = {"cfg": UpdateConfig(steps=long_steps, lr=args.layer_lr, preserve=0.0), "full": True}
    return methods


def solve_method(rw: Rewriter, layer: str, prep: Prepared, m: dict, cov: torch.Tensor, stats_cfg: StatsConfig,
                 name: str) -> tuple[LowRankDelta, EditSpec]:
    """One layer method's weight change for `prep` at `layer`, and the edit it answers (its masks and configs)."""
    cfg = m["cfg"] if prep.task.copy else replace(m["cfg"], erase=True)
    edit = rw.new_edit(layer, prep.paste, prep.copy, prep.context, update=cfg, stats=stats_cfg, name=name,
                       keys=m.get("keys", KeyConfig()))
    if m.get("full"):
        dense = finetune_layer(rw, layer, prep, cfg, cov)
        return full_rank_delta(rw, layer, dense, rw.directions(layer, prep.context, KeyConfig(), stats_cfg)[0]), edit
    if m.get("identity"):
        spec, dirs, goal = build_goal(rw, layer, prep, cfg, torch.eye(cov.shape[0], dtype=cov.dtype))
        return solve_update(rw.model, spec, dirs, goal, cfg).delta, edit
    return rw.solve(edit).delta, edit


@contextmanager
def reference_steps(scale: float) -> Iterator[int]:
    """The reference method's step count (`model_rewrite.reference.REFERENCE_STEPS`) scaled for small runs."""
    old = reference.REFERENCE_STEPS
    reference.REFERENCE_STEPS = max(1, round(old * scale))
    try:
        yield reference.REFERENCE_STEPS
    finally:
        reference.REFERENCE_STEPS = old


# --- evaluation -------------------------------------------------------------------------------------
@dataclass
class Truth:
    """Unedited images read once for one edit: labels, mode-filtered labels and the context objects."""

    labels: np.ndarray  # (N, H, W)
    objects: np.ndarray  # (N, H, W) object ids of the context class (world_metrics.objects), 0 elsewhere


def read_truth(before: np.ndarray, task: EditTask) -> Truth:
    labels = fast_labels(before)
    return Truth(labels, objects(mode_filter(labels, len(CLASSES)), CLASS_INDEX[task.context]))


def measure(before: np.ndarray, after: np.ndarray, task: EditTask, dilation: int, truth: Truth | None = None) -> dict[str, float]:
    """Success (pixel and object level) and collateral of one edit over images before/after (N, H, W, 3) uint8."""
    truth = truth if truth is not None else read_truth(before, task)
    lab0, lab1 = truth.labels, fast_labels(after)
    ctx = lab0 == CLASS_INDEX[task.context]
    other = ~dilate(ctx, dilation)
    hit = ctx & (lab1 == CLASS_INDEX[task.target])
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(-1)  # (N, H, W)
    n_ctx = int(ctx.sum())
    sib = (lab0 == CLASS_INDEX[task.sibling]) & ~dilate(ctx, 1)
    sib_target = task.target if task.sibling != task.target else task.context  # roof_to_dome: do domes stay domes?
    sib_changed = (lab1 != lab0) if task.sibling == task.target else (lab1 == CLASS_INDEX[sib_target])
    per_image = [float(hit[i].sum() / ctx[i].sum()) for i in range(len(ctx)) if ctx[i].sum() > 0]
    obj, n_obj = object_success(truth.objects, mode_filter(lab1, len(CLASSES)), CLASS_INDEX[task.target])
    return {
        "success": float(hit.sum() / n_ctx) if n_ctx else float("nan"),
        "object_success": obj,
        "objects": n_obj,
        "success_per_image_mean": float(np.mean(per_image)) if per_image else float("nan"),
        "images_with_context": len(per_image),
        "context_pixels": n_ctx,
        "label_collateral": float((lab1 != lab0)[other].mean()),
        "pixel_collateral": float(diff[other].mean()),
        "pixel_change_in_context": float(diff[ctx].mean()) if n_ctx else float("nan"),
        # pixels of the sibling class (away from the context) that took the target label (or, when the sibling
        # is the target class itself, that changed label): does the rule leak to the other kind of top?
        "sibling_spill": float(sib_changed[sib].mean()) if sib.any() else float("nan"),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


QUALITY_KEYS = ("transfer", "paste_fidelity", "collateral", "fires_on")


@dataclass
class Scene:
    """What every run of one edit is measured on."""

    task: EditTask
    z_eval: torch.Tensor
    z_paste: torch.Tensor
    before: np.ndarray
    paste_before: np.ndarray
    truth: Truth
    paste_truth: Truth
    quality_seeds: list[int]
    originals: dict  # unedited images by seed, shared by every quality report


def evaluate(rw: Rewriter, scene: Scene, args: argparse.Namespace, delta: LowRankDelta | None = None,
             edit: EditSpec | None = None, model: nn.Module | None = None) -> tuple[dict, np.ndarray]:
    """Measure a layer edit (`delta`, pushed with `edit` for the quality report, then removed) or a whole
    fine-tuned `model`; returns the metrics and the edited held-out images."""
    q = None
    if delta is not None:
        entry = rw.stack.push(delta, edit.name if edit else "", edit)
        try:
            after, paste_after = to_uint8(generate(rw.model, scene.z_eval)), to_uint8(generate(rw.model, scene.z_paste))
            if scene.quality_seeds:
                rep = quality_report(rw, entry.id, scene.quality_seeds, originals=scene.originals)
                q = {k: getattr(rep, k) for k in QUALITY_KEYS} | {"locality": rep.change.ratio, "heldout": rep.heldout}
        finally:
            rw.stack.remove(entry.id)
    else:
        after, paste_after = to_uint8(generate(model, scene.z_eval)), to_uint8(generate(model, scene.z_paste))
    r = measure(scene.before, after, scene.task, args.dilate, scene.truth)
    p = measure(scene.paste_before, paste_after, scene.task, args.dilate, scene.paste_truth)
    r["success_on_paste_image"], r["object_success_on_paste_image"] = p["success"], p["object_success"]
    if q is not None:  # exact success on the images the quality report saw
        n = len(scene.quality_seeds)
        sub = Truth(scene.truth.labels[:n], scene.truth.objects[:n])
        r["success_on_quality_seeds"] = measure(scene.before[:n], after[:n], scene.task, args.dilate, sub)["success"]
    r["quality"] = q
    return r, after


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    t_all = time.perf_counter()
    rw = Rewriter(str(args.model), cache_dir=args.out / ".cache")
    stats_cfg = StatsConfig(num_samples=args.stats_samples)
    covs, stats_s = {}, {}
    for layer in args.layers:
        t0 = time.perf_counter()
        covs[layer] = rw.stats(layer, stats_cfg).moment
        stats_s[layer] = round(time.perf_counter() - t0, 2)
    pool_images = to_uint8(rw.sample(list(range(POOL_SEED0, POOL_SEED0 + args.pool))))
    pool_labels = fast_labels(pool_images)
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    suggest_seeds = list(range(SUGGEST_SEED0, SUGGEST_SEED0 + args.suggest_seeds))
    z_eval = rw.latents(eval_seeds)
    before = to_uint8(generate(rw.model, z_eval))
    feat = _Features(args.disc)
    world_images, world_labels = scenes_from_seeds(range(1_000_000, 1_000_000 + args.seeds))
    gen_labels = fast_labels(before)
    rules = {"labeller_accuracy_on_held_out_scenes": float((fast_labels(world_images) == world_labels).mean()),
             "training_world": rule_statistics(world_labels), "generator_samples": rule_statistics(gen_labels),
             "class_fractions": {c: [round(float(a), 5), round(float(b), 5)] for c, a, b in
                                 zip(CLASSES, label_fractions(world_labels), label_fractions(gen_labels))}}
    s = args.steps_scale
    methods = layer_methods(args)
    all_steps = max(1, round(args.all_steps * s))
    results: dict = {"meta": {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "fingerprint": rw.info.fingerprint, "layers": list(args.layers), "ranks": list(args.ranks),
        "eval_seeds": [eval_seeds[0], eval_seeds[-1]], "n_eval": len(eval_seeds), "n_context": args.contexts,
        "quality_seeds": [eval_seeds[0], eval_seeds[min(args.quality_seeds, len(eval_seeds)) - 1]] if args.quality_seeds else None,
        "suggest_seeds": [suggest_seeds[0], suggest_seeds[-1]], "dilate_px": args.dilate,
        "object_rule": {"mode_filter": MODE_SIZE, "min_object_pixels": MIN_OBJECT_PIXELS, "hit_fraction": OBJECT_HIT_FRACTION},
        "collateral_bound": args.collateral_bound, "stats_samples": args.stats_samples, "stats_seconds": stats_s,
        "steps_scale": s, "finetune_all": {"steps": all_steps, "lr": args.all_lr, "feature_weight": args.feat_weight,
                                           "features": feat.kind},
        "finetune_layer_lr": args.layer_lr, "commit": _git_commit(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "rank_methods": {str(r): rank_method(r) for r in args.ranks},
        "configs": {k: {**v.get("keys", KeyConfig()).__dict__, **v["cfg"].__dict__} for k, v in methods.items()},
    }, "rules": rules, "edits": {}, "runs": []}
    examples: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    object_rows: dict[str, list[np.ndarray]] = {}
    originals: dict = {}

    def record(task: EditTask, layer: str, name: str, r: dict, seconds: float, after: np.ndarray, show: list[int],
               label: str | None = None) -> None:
        r.update(edit=task.name, layer=layer, method=name, seconds=round(seconds, 3))
        results["runs"].append(r)
        for key in [k for k in examples if k[0] == task.name and (label or layer in ("-", k[1]))]:
            examples[key][label or name] = after[show]  # layer-free rows (and suggest's) go in every layer's figure
        q = r["quality"] or {}
        fmt = lambda v: "  n/a" if v is None else f"{v:5.2f}"  # noqa: E731
        print(f"{task.name:14s} {layer:4s} {name:26s} success={r['success']:.3f} object={r['object_success']:.3f} "
              f"label_coll={r['label_collateral']:.4f} transfer={fmt(q.get('transfer'))} t={seconds:.1f}s", flush=True)

    with reference_steps(s) as ref_steps:
        results["meta"]["reference_steps"] = ref_steps
        for task in TASKS:
            prep = prepare(rw, task, pool_labels, pool_images, args.contexts, args.min_context_pixels)
            z_paste = rw.latents([prep.paste.seed])
            paste_before = to_uint8(generate(rw.model, z_paste))
            scene = Scene(task, z_eval, z_paste, before, paste_before, read_truth(before, task), read_truth(paste_before, task),
                          eval_seeds[: args.quality_seeds], originals)
            show = [int(i) for i in np.argsort(-(scene.truth.labels == CLASS_INDEX[task.context]).reshape(len(before), -1).sum(1),
                                               kind="stable")[: args.examples]]
            for layer in args.layers:
                examples[(task.name, layer)] = {"unedited": before[show]}
            info = {"paste_seed": prep.paste.seed, "copy_seed": prep.copy.seed if prep.copy else None,
                    "context_seeds": [c.seed for c in prep.context]}
            r = measure(before, before, task, args.dilate, scene.truth)
            r.update(success_on_paste_image=0.0, object_success_on_paste_image=0.0, quality=None)
            record(task, "-", "unedited", r, 0.0, before, show)
            for layer in args.layers:
                for name, m in methods.items():
                    t0 = time.perf_counter()
                    delta, edit = solve_method(rw, layer, prep, m, covs[layer], stats_cfg, name)
                    seconds = time.perf_counter() - t0
                    r, after = evaluate(rw, scene, args, delta, edit)
                    r["rank"] = m.get("keys", KeyConfig()).rank if not m.get("full") else None
                    record(task, layer, name, r, seconds, after, show)
            t0 = time.perf_counter()
            g = finetune_all(rw.model, z_paste, prep, all_steps, args.all_lr, feat, args.feat_weight)
            seconds = time.perf_counter() - t0
            r, after = evaluate(rw, scene, args, model=g)
            record(task, "-", "finetune_all_weights", r, seconds, after, show)
            # suggest: the library's choice of (layer, rank), scored on held-out seeds disjoint from the evaluation
            t0 = time.perf_counter()
            base = rw.new_edit(args.layers[-1], prep.paste, prep.copy, prep.context, stats=stats_cfg, name="suggest",
                               update=UpdateConfig(steps=max(1, round(UpdateConfig().steps * s)), erase=task.copy is None))
            cands = rw.suggest(base, layers=args.layers, ranks=args.ranks, seeds=suggest_seeds)
            suggest_s = time.perf_counter() - t0
            pick = cands[0]
            edit = replace(base, layer=pick.layer, keys=replace(base.keys, rank=pick.rank))
            delta = rw.solve(edit).delta
            seconds = time.perf_counter() - t0
            r, after = evaluate(rw, scene, args, delta, edit)
            r.update(rank=pick.rank, picked_layer=pick.layer, suggest_seconds=round(suggest_s, 3))
            record(task, pick.layer, "suggest", r, seconds, after, show, label=f"suggest ({pick.layer} r{pick.rank})")
            info["suggest"] = {"pick": {"layer": pick.layer, "rank": pick.rank}, "seconds": round(suggest_s, 3),
                               "candidates": [c.to_dict() for c in cands]}
            results["edits"][task.name] = info
            filtered = colour_labels(mode_filter(scene.truth.labels[show], len(CLASSES)))
            object_rows[task.name] = [before[show], filtered, outline(filtered, scene.truth.objects[show])]
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    results["analysis"] = analyse(results)
    samples = [world_images[:10], colour_labels(world_labels[:10]), before[:10], colour_labels(gen_labels[:10])]
    write_outputs(results, examples, object_rows, args.out, samples)
    return results


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--disc", type=Path, default=DEFAULT_DISC, help="discriminator for the fine-tune-all feature term")
    p.add_argument("--layers", type=lambda t: [x for x in t.split(",") if x], default=["b8", "b16", "b32"],
                   help="layers of the sweep (comma separated); suggest chooses among them")
    p.add_argument("--ranks", type=_int_list, default=[1, 2, 4], help="ranks of our default solve and of suggest (must hold 1)")
    p.add_argument("--seeds", type=int, default=1000, help="held-out evaluation images")
    p.add_argument("--quality-seeds", type=int, default=48, help="first held-out seeds the quality report runs on (0: none)")
    p.add_argument("--suggest-seeds", type=int, default=32, help=f"held-out seeds suggest scores on (from {SUGGEST_SEED0})")
    p.add_argument("--pool", type=int, default=300, help="images the context/copy/paste examples are picked from")
    p.add_argument("--contexts", type=int, default=8, help="context examples (every method gets the same ones)")
    p.add_argument("--min-context-pixels", type=int, default=8)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count, the reference's too (small runs)")
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--layer-lr", type=float, default=1e-3, help="Adam lr of the one-layer full-rank fine-tune")
    p.add_argument("--all-steps", type=int, default=300)
    p.add_argument("--all-lr", type=float, default=1e-3)
    p.add_argument("--feat-weight", type=float, default=0.1)
    p.add_argument("--dilate", type=int, default=3)
    p.add_argument("--collateral-bound", type=float, default=0.05,
                   help="label collateral a configuration may have to count as the best one (suggest hit rate)")
    p.add_argument("--examples", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world_sweep")
    args = p.parse_args(argv)
    if 1 not in args.ranks:
        p.error("--ranks must hold 1 (our rank-1 default is a method of every layer)")
    if EVAL_SEED0 + args.seeds > SUGGEST_SEED0:
        p.error(f"--seeds must stay below {SUGGEST_SEED0 - EVAL_SEED0} so suggest's seeds stay held out from the evaluation")
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
