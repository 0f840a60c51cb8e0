"""Exact-label benchmark of rule rewriting against fine-tuning baselines on the procedural world.

A generator trained on `model_rewrite.world` scenes is edited three ways, each with a known truth read by the
world's nearest-colour labeller:

1. `dome_to_tree`: domes (a kind of tower top) become tree tops (canopy);
2. `erase_windows`: windows are removed, leaving plain wall (the erase variant);
3. `roof_to_dome`: pointed roofs become domes.

For every method and edit, over held-out seeds:
- success = fraction of the context class's pixels in the unedited image that carry the target label in the
  edited image (pooled over all pixels of all images);
- label collateral = fraction of the pixels outside the context (dilated by `--dilate` pixels) whose label changed;
- pixel collateral = mean absolute change (0..255 levels) of those pixels.

    nice -n 10 python benchmarks/world/bench_world.py                        # the full run (README table)
    python benchmarks/world/bench_world.py --seeds 16 --steps-scale 0.01 --out /tmp/w   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from model_rewrite.config import KeyConfig, StatsConfig, UpdateConfig
from model_rewrite.directions import key_directions
from model_rewrite.hooks import call_with_weight, get_module
from model_rewrite.masks import check_mask
from model_rewrite.render import generate, image_grid, save_png, to_uint8
from model_rewrite.edits import Selection
from model_rewrite.goals import context_keys, copy_paste_goal, erase_goal, erase_units, observe
from model_rewrite.rewrite import Rewriter
from model_rewrite.solve import solve_update
from model_rewrite.update import LowRankDelta
from world import CLASS_INDEX, CLASSES, colour_labels, label_fractions, labels_from_image, rule_statistics, scenes_from_seeds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_MODEL = HERE / "world_gan.safetensors"
DEFAULT_DISC = HERE / "world_disc.safetensors"
EVAL_SEED0 = 100_000  # held-out evaluation images are seeds EVAL_SEED0 .. EVAL_SEED0 + seeds - 1
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
def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of (..., H, W) by a (2r+1)^2 square."""
    out = mask.copy()
    for _ in range(r):
        m = out.copy()
        m[..., 1:, :] |= out[..., :-1, :]
        m[..., :-1, :] |= out[..., 1:, :]
        m[..., :, 1:] |= m[..., :, :-1]
        m[..., :, :-1] |= m[..., :, 1:]
        out = m
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, stack = [], [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


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


# --- evaluation -------------------------------------------------------------------------------------
def measure(before: np.ndarray, after: np.ndarray, task: EditTask, dilation: int) -> dict[str, float]:
    """Success and collateral of one edit over images before/after (N, H, W, 3) uint8."""
    lab0, lab1 = labels_from_image(before), labels_from_image(after)
    ctx = lab0 == CLASS_INDEX[task.context]
    other = ~dilate(ctx, dilation)
    hit = ctx & (lab1 == CLASS_INDEX[task.target])
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(-1)  # (N, H, W)
    n_ctx = int(ctx.sum())
    sib = (lab0 == CLASS_INDEX[task.sibling]) & ~dilate(ctx, 1)
    sib_target = task.target if task.sibling != task.target else task.context  # roof_to_dome: do domes stay domes?
    sib_changed = (lab1 != lab0) if task.sibling == task.target else (lab1 == CLASS_INDEX[sib_target])
    per_image = [float(hit[i].sum() / ctx[i].sum()) for i in range(len(ctx)) if ctx[i].sum() > 0]
    return {
        "success": float(hit.sum() / n_ctx) if n_ctx else float("nan"),
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


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    t_all = time.perf_counter()
    rw = Rewriter(str(args.model), cache_dir=args.out / ".cache")
    layer = args.layer
    stats_cfg = StatsConfig(num_samples=args.stats_samples)
    t0 = time.perf_counter()
    cov = rw.stats(layer, stats_cfg).moment
    stats_s = time.perf_counter() - t0
    pool_seeds = list(range(POOL_SEED0, POOL_SEED0 + args.pool))
    pool_images = to_uint8(rw.sample(pool_seeds))
    pool_labels = labels_from_image(pool_images)
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    z_eval = rw.latents(eval_seeds)
    before = to_uint8(generate(rw.model, z_eval))
    feat = _Features(args.disc)
    world_images, world_labels = scenes_from_seeds(range(1_000_000, 1_000_000 + args.seeds))
    gen_labels = labels_from_image(before)
    rules = {"labeller_accuracy_on_held_out_scenes": float((labels_from_image(world_images) == world_labels).mean()),
             "training_world": rule_statistics(world_labels), "generator_samples": rule_statistics(gen_labels),
             "class_fractions": {c: [round(float(a), 5), round(float(b), 5)] for c, a, b in
                                 zip(CLASSES, label_fractions(world_labels), label_fractions(gen_labels))}}
    s = args.steps_scale
    ref_steps, default_steps = max(1, round(2000 * s)), max(1, round(UpdateConfig().steps * s))
    methods: dict[str, dict] = {
        "ours_rank1_closed_form": {"cfg": UpdateConfig(method="closed_form")},
        "ours_rank1_default": {"cfg": UpdateConfig(steps=default_steps)},
        "ours_rank1_reference": {"cfg": UpdateConfig(steps=ref_steps, lr=0.05, preserve=0.0)},
        f"ours_rank{args.rank}": {"cfg": UpdateConfig(steps=default_steps), "keys": KeyConfig(rank=args.rank)},
        "ablation_identity_cov": {"cfg": UpdateConfig(steps=default_steps), "identity": True},
        "finetune_layer_full_rank": {"cfg": UpdateConfig(steps=ref_steps, lr=args.layer_lr, preserve=0.0), "full": True},
        "finetune_all_weights": {"all": True},
    }
    results: dict = {"meta": {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "fingerprint": rw.info.fingerprint, "layer": layer, "eval_seeds": [eval_seeds[0], eval_seeds[-1]],
        "n_eval": len(eval_seeds), "n_context": args.contexts, "rank_r": args.rank, "dilate_px": args.dilate,
        "stats_samples": args.stats_samples, "stats_seconds": round(stats_s, 2), "steps_scale": s,
        "finetune_all": {"steps": max(1, round(args.all_steps * s)), "lr": args.all_lr, "feature_weight": args.feat_weight,
                         "features": feat.kind},
        "finetune_layer_lr": args.layer_lr, "commit": _git_commit(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "configs": {k: ({**v.get("keys", KeyConfig()).__dict__, **v["cfg"].__dict__} if "cfg" in v else None)
                    for k, v in methods.items()},
    }, "rules": rules, "edits": {}}
    examples: dict[str, dict[str, np.ndarray]] = {}
    for task in TASKS:
        prep = prepare(rw, task, pool_labels, pool_images, args.contexts, args.min_context_pixels)
        z_paste = rw.latents([prep.paste.seed])
        paste_before = to_uint8(generate(rw.model, z_paste))
        res_task = {"_selection": {"paste_seed": prep.paste.seed, "copy_seed": prep.copy.seed if prep.copy else None,
                                   "context_seeds": [c.seed for c in prep.context]},
                    "unedited": measure(before, before, task, args.dilate) | {"seconds": 0.0}}
        ctx_count = (labels_from_image(before) == CLASS_INDEX[task.context]).reshape(len(before), -1).sum(1)
        show = [int(i) for i in np.argsort(-ctx_count, kind="stable")[: args.examples]]
        shown = {"unedited": before[show]}
        for name, m in methods.items():
            t0 = time.perf_counter()
            if m.get("all"):
                z = rw.latents([prep.paste.seed])
                g = finetune_all(rw.model, z, prep, max(1, round(args.all_steps * s)), args.all_lr, feat, args.feat_weight)
                seconds = time.perf_counter() - t0
                after = to_uint8(generate(g, z_eval))
                paste_after = to_uint8(generate(g, z_paste))
            else:
                cfg = m["cfg"] if task.copy else replace(m["cfg"], erase=True)
                if m.get("full"):
                    dense = finetune_layer(rw, layer, prep, cfg, cov)
                    spec = rw.spec(layer)
                    # a rank-C_in "delta" written in the identity basis, so the edit stack can hold it
                    c_in = dense.shape[spec.key_axis]
                    delta = LowRankDelta(spec.param_path, spec.key_axis, dense, torch.eye(c_in, dtype=dense.dtype))
                elif m.get("identity"):
                    spec, dirs, goal = build_goal(rw, layer, prep, cfg, torch.eye(cov.shape[0], dtype=cov.dtype))
                    delta = solve_update(rw.model, spec, dirs, goal, cfg).delta
                else:
                    edit = rw.new_edit(layer, prep.paste, prep.copy, prep.context, update=cfg, stats=stats_cfg, name=name,
                                       keys=m.get("keys", KeyConfig()))
                    delta = rw.solve(edit).delta
                seconds = time.perf_counter() - t0
                rw.stack.push(delta, name)
                after = to_uint8(generate(rw.model, z_eval))
                paste_after = to_uint8(generate(rw.model, z_paste))
                rw.stack.revert_all()
            r = measure(before, after, task, args.dilate)
            r["success_on_paste_image"] = measure(paste_before, paste_after, task, args.dilate)["success"]
            r["seconds"] = round(seconds, 3)
            res_task[name] = r
            shown[name] = after[show]
            print(f"{task.name:14s} {name:26s} success={r['success']:.3f} label_coll={r['label_collateral']:.4f} "
                  f"pix_coll={r['pixel_collateral']:.2f} t={seconds:.1f}s", flush=True)
        results["edits"][task.name] = res_task
        examples[task.name] = shown
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    samples = [world_images[:10], colour_labels(world_labels[:10]), before[:10], colour_labels(gen_labels[:10])]
    write_outputs(results, examples, args.out, samples)
    return results


# --- outputs ----------------------------------------------------------------------------------------
METRICS = ("success", "label_collateral", "pixel_collateral", "seconds")


def markdown_table(results: dict) -> str:
    lines = ["| edit | method | success ↑ | success on the paste image | label collateral ↓ | pixel collateral ↓ (0-255) | sibling spill ↓ | time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, rows in results["edits"].items():
        for name, r in rows.items():
            if name.startswith("_"):
                continue
            lines.append(f"| {task} | {name} | {r['success']:.3f} | {r.get('success_on_paste_image', r['success']):.3f} | "
                         f"{r['label_collateral']:.4f} | {r['pixel_collateral']:.2f} | {r['sibling_spill']:.4f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def write_outputs(results: dict, examples: dict[str, dict[str, np.ndarray]], out: Path,
                  samples: list[np.ndarray] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    meta = results["meta"]
    head = (f"Model `{meta['model']}` (fingerprint {meta['fingerprint']}), layer `{meta['layer']}`, {meta['n_eval']} held-out seeds "
            f"(from {meta['eval_seeds'][0]}), {meta['n_context']} context examples, rank r = {meta['rank_r']}, "
            f"collateral measured outside the context dilated by {meta['dilate_px']} px; steps scale {meta['steps_scale']}; "
            f"commit {meta['commit']}, torch {meta['torch']}, {meta['threads']} CPU thread(s).\n\n")
    rules = results["rules"]
    rule_lines = ["| rule | world scenes | generator samples |", "| --- | --- | --- |"]
    rule_lines += [f"| {k} | {v:.3f} | {rules['generator_samples'][k]:.3f} |" for k, v in rules["training_world"].items()]
    rule_lines += [f"| fraction of {c} pixels | {a:.4f} | {b:.4f} |" for c, (a, b) in rules["class_fractions"].items()]
    rules_md = (f"\n\nRule obedience ({meta['n_eval']} held-out world scenes vs {meta['n_eval']} generator samples, read by the "
                f"labeller; labeller pixel accuracy on the held-out scenes: {rules['labeller_accuracy_on_held_out_scenes']:.4f}):\n\n"
                + "\n".join(rule_lines) + "\n")
    (out / "results.md").write_text(head + markdown_table(results) + "\n" + rules_md)
    tasks = list(results["edits"])
    names = [n for n in results["edits"][tasks[0]] if not n.startswith("_")]
    markers = "os^vDP*Xhp<>"
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks) + 2.6, 4.0))
    axes = np.atleast_1d(axes)
    for ax, task in zip(axes, tasks):
        for i, name in enumerate(names):
            r = results["edits"][task][name]
            ax.scatter(r["label_collateral"], r["success"], s=55, marker=markers[i % len(markers)], color=f"C{i}",
                       label=name, alpha=0.85)
        ax.set_title(task)
        ax.set_xlabel("label collateral (other pixels relabelled)")
        ax.set_ylabel("success (context pixels -> target label)")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(-1e-4, 1.0)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "success_vs_collateral.png", dpi=110)
    plt.close(fig)
    if samples is not None:  # world scenes, their labels, generator samples, the labeller's reading of them
        save_png(image_grid(samples, pad=2, scale=3), out / "samples_and_labels.png")
    for task, shown in examples.items():
        names = list(shown)
        grid = image_grid([shown[n] for n in names], pad=2, scale=2)
        fig, ax = plt.subplots(figsize=(grid.shape[1] / 90 + 1.8, grid.shape[0] / 90 + 0.4))
        ax.imshow(grid)
        row_h = grid.shape[0] / len(names)
        ax.set_yticks([row_h * (i + 0.5) for i in range(len(names))], names, fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{task}: unedited (top) and each method (held-out seeds)", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"examples_{task}.png", dpi=100)
        plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--disc", type=Path, default=DEFAULT_DISC, help="discriminator for the fine-tune-all feature term")
    p.add_argument("--layer", default="b32")
    p.add_argument("--seeds", type=int, default=1000, help="held-out evaluation images")
    p.add_argument("--pool", type=int, default=300, help="images the context/copy/paste examples are picked from")
    p.add_argument("--contexts", type=int, default=8, help="context examples (every method gets the same ones)")
    p.add_argument("--rank", type=int, default=3, help="rank r of the rank-r method")
    p.add_argument("--min-context-pixels", type=int, default=8)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count (small runs)")
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--layer-lr", type=float, default=1e-3, help="Adam lr of the one-layer full-rank fine-tune")
    p.add_argument("--all-steps", type=int, default=300)
    p.add_argument("--all-lr", type=float, default=1e-3)
    p.add_argument("--feat-weight", type=float, default=0.1)
    p.add_argument("--dilate", type=int, default=3)
    p.add_argument("--examples", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
