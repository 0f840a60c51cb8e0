"""Many rules at once in the procedural world (issue 13): six exact-label rules each alone, solved jointly
(`Rewriter.apply_many`), and stacked one after another (each solved against the weights the ones before it
left), with exact success and collateral read by the world's labeller.

Rules: `bench_world.TASKS` (dome_to_tree, erase_windows, roof_to_dome) and three more the world expresses:
cloud_to_sky (clouds painted over with sky), door_to_wall (doors walled up) and tower_to_wall (tower bodies
turned to wall). The new rules' context and paste images are picked as bench_world picks them; their paste
box is the pasted-over object's box and their copy is a box of that size where the target class fills it
best among the pool images (so the copied look is the target class, not a whole other object).

Per rule: success (as bench_world: context pixels of the unedited image that carry the target label after the
edit, pooled) alone, joint and sequential, and its own label collateral alone. Per six-rule model (joint,
sequential, and the six single solves' deltas simply summed): total label collateral = fraction of pixels
outside every rule's context (dilated) whose label changed, and their mean pixel change (0-255).
Targets: joint success >= 0.9 x alone for every rule; joint total collateral <= sequential's.

    nice -n 10 python benchmarks/world/bench_many_rules.py                 # the README table
    torchrun --nproc_per_node 2 benchmarks/world/bench_many_rules.py       # evaluation sharded over 2 processes
    python benchmarks/world/bench_many_rules.py --seeds 16 --pool 80 --contexts 2 --stats-samples 100 --out /tmp/m
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_world import (DEFAULT_MODEL, EVAL_SEED0, POOL_SEED0, ROOT, TASKS, EditTask, Prepared, _git_commit, bbox, dilate,
                         largest_component, measure, prepare)
from model_rewrite import distributed
from model_rewrite.config import StatsConfig, UpdateConfig
from model_rewrite.edits import Selection
from model_rewrite.render import image_grid, save_png, to_uint8
from model_rewrite.rewrite import Rewriter
from world import CLASS_INDEX, labels_from_image

NEW_TASKS = (
    EditTask("cloud_to_sky", "cloud", "sky", "sky", "sky"),
    EditTask("door_to_wall", "door", "wall", "wall", "window"),
    EditTask("tower_to_wall", "tower", "wall", "wall", "wall"),
)
RULES = TASKS + NEW_TASKS
SETTINGS = ("alone", "joint", "sequential", "summed")


def fill_box(pool_labels: np.ndarray, cls: str, h: int, w: int, skip: int) -> tuple[int, int, int, float]:
    """(pool index, y0, x0, fraction): the h x w box that the class `cls` fills most, over the pool but `skip`."""
    best = (-1, 0, 0, -1.0)
    for i, lab in enumerate(pool_labels):
        if i == skip:
            continue
        hit = np.pad((lab == CLASS_INDEX[cls]).astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        sums = hit[h:, w:] - hit[:-h, w:] - hit[h:, :-w] + hit[:-h, :-w]  # every box's count
        y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
        frac = float(sums[y, x]) / (h * w)
        if frac > best[3]:
            best = (i, int(y), int(x), frac)
    return best


def prepare_rule(rw: Rewriter, task: EditTask, pool_labels: np.ndarray, pool_images: np.ndarray, n_context: int,
                 min_pixels: int) -> Prepared:
    """bench_world.prepare for its own tasks; for the new ones, its picks with a fill copy (see the docstring)."""
    if task in TASKS:
        return prepare(rw, task, pool_labels, pool_images, n_context, min_pixels)
    prep = prepare(rw, replace(task, copy=None), pool_labels, pool_images, n_context, min_pixels)
    paste_i = prep.paste.seed - POOL_SEED0
    y0, y1, x0, x1 = bbox(largest_component(pool_labels[paste_i] == CLASS_INDEX[task.context]))
    size = pool_labels.shape[-1]
    paste = np.zeros((size, size), np.float32)
    paste[y0:y1, x0:x1] = 1.0
    ci, cy, cx, _ = fill_box(pool_labels, task.target, y1 - y0, x1 - x0, paste_i)
    copy = np.zeros((size, size), np.float32)
    copy[cy:cy + y1 - y0, cx:cx + x1 - x0] = 1.0
    return replace(prep, task=task, paste=Selection(prep.paste.seed, torch.from_numpy(paste)),
                   copy=Selection(POOL_SEED0 + ci, torch.from_numpy(copy)))


def total_collateral(before: np.ndarray, after: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """Label and pixel collateral of a model over the pixels `outside` (N, H, W) every rule's context."""
    lab0, lab1 = labels_from_image(before), labels_from_image(after)
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(-1)
    return {"label_collateral": float((lab1 != lab0)[outside].mean()), "pixel_collateral": float(diff[outside].mean())}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    t_all = time.perf_counter()
    rw = Rewriter(str(args.model), cache_dir=args.out / ".cache")
    stats_cfg = StatsConfig(num_samples=args.stats_samples)
    rw.stats(args.layer, stats_cfg)
    pool_images = to_uint8(rw.sample(list(range(POOL_SEED0, POOL_SEED0 + args.pool))))
    pool_labels = labels_from_image(pool_images)
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    before = to_uint8(rw.sample(eval_seeds))
    lab0 = labels_from_image(before)
    outside = ~np.logical_or.reduce([dilate(lab0 == CLASS_INDEX[t.context], args.dilate) for t in RULES])
    preps = [prepare_rule(rw, t, pool_labels, pool_images, args.contexts, args.min_context_pixels) for t in RULES]
    steps = max(1, round(UpdateConfig().steps * args.steps_scale))
    methods = {"closed_form": UpdateConfig(method="closed_form"), "default": UpdateConfig(steps=steps)}
    results: dict = {"meta": {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "fingerprint": rw.info.fingerprint, "layer": args.layer, "eval_seeds": [eval_seeds[0], eval_seeds[-1]],
        "n_eval": len(eval_seeds), "n_context": args.contexts, "dilate_px": args.dilate, "stats_samples": args.stats_samples,
        "steps_scale": args.steps_scale, "commit": _git_commit(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "processes": distributed.world()[1], "machine": platform.machine(),
        "rules": {t.name: {"context": t.context, "target": t.target, "copy": t.copy, "paste_seed": p.paste.seed,
                           "copy_seed": p.copy.seed if p.copy else None, "context_seeds": [c.seed for c in p.context]}
                  for t, p in zip(RULES, preps)},
        "configs": {k: v.__dict__ for k, v in methods.items()}}, "methods": {}}
    shown: dict[str, np.ndarray] = {"unedited": before}
    for method, cfg in methods.items():
        edits = [rw.new_edit(args.layer, p.paste, p.copy, p.context, update=cfg if t.copy else replace(cfg, erase=True),
                             stats=stats_cfg, name=t.name) for t, p in zip(RULES, preps)]
        rows: dict = {t.name: {} for t in RULES}
        models: dict = {}
        deltas, t_alone = [], 0.0
        for t, e in zip(RULES, edits):
            t0 = time.perf_counter()
            deltas.append(rw.apply(e).delta)
            t_alone += time.perf_counter() - t0
            after = to_uint8(rw.sample(eval_seeds))
            rows[t.name]["alone"] = measure(before, after, t, args.dilate)
            rows[t.name]["alone"]["outside_every_context"] = total_collateral(before, after, outside)
            rw.stack.revert_all()
        models["summed"] = {"seconds": round(t_alone, 3)}
        for d, t in zip(deltas, RULES):
            rw.stack.push(d, t.name)
        after = to_uint8(rw.sample(eval_seeds))
        models["summed"] |= _six(before, after, outside, rows, "summed", args.dilate)
        rw.stack.revert_all()
        t0 = time.perf_counter()
        (entry,) = rw.apply_many(edits)
        models["joint"] = {"seconds": round(time.perf_counter() - t0, 3), "rank": entry.delta.rank}
        after = to_uint8(rw.sample(eval_seeds))
        models["joint"] |= _six(before, after, outside, rows, "joint", args.dilate)
        shown[f"{method} joint"] = after
        rw.stack.revert_all()
        t0 = time.perf_counter()
        for e in edits:
            rw.apply(e)
        models["sequential"] = {"seconds": round(time.perf_counter() - t0, 3)}
        after = to_uint8(rw.sample(eval_seeds))
        models["sequential"] |= _six(before, after, outside, rows, "sequential", args.dilate)
        shown[f"{method} sequential"] = after
        rw.stack.revert_all()
        ratios = {n: r["joint"]["success"] / r["alone"]["success"] if r["alone"]["success"] > 0 else float("nan")
                  for n, r in rows.items()}
        targets = {"joint_keeps_90pc_of_alone_success": all(v >= 0.9 for v in ratios.values()),
                   "joint_total_collateral_at_most_sequential":
                       models["joint"]["label_collateral"] <= models["sequential"]["label_collateral"]}
        results["methods"][method] = {"rules": rows, "models": models, "joint_over_alone": ratios, "targets": targets}
        if distributed.is_main():
            print(method, {n: round(v, 3) for n, v in ratios.items()}, models, flush=True)
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    if distributed.is_main():
        write_outputs(results, shown, lab0, args.out)
    return results


def _six(before: np.ndarray, after: np.ndarray, outside: np.ndarray, rows: dict, setting: str, dilation: int) -> dict:
    """Each rule's figures inside one six-rule model, and the model's total collateral."""
    for t in RULES:
        rows[t.name][setting] = measure(before, after, t, dilation)
    return total_collateral(before, after, outside)


def markdown(results: dict) -> str:
    out = []
    for method, res in results["methods"].items():
        out += [f"### {method}", "", "| rule | success alone | joint | sequential | summed | joint / alone | label collateral alone (own) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in res["rules"].items():
            out.append(f"| {name} | {r['alone']['success']:.3f} | {r['joint']['success']:.3f} | {r['sequential']['success']:.3f} "
                       f"| {r['summed']['success']:.3f} | {res['joint_over_alone'][name]:.2f} | {r['alone']['label_collateral']:.4f} |")
        out += ["", "| six rules at once | total label collateral ↓ | total pixel collateral ↓ (0-255) | solve time (s) |",
                "| --- | --- | --- | --- |"]
        for setting in ("joint", "sequential", "summed"):
            m = res["models"][setting]
            extra = f" (rank {m['rank']})" if "rank" in m else ""
            out.append(f"| {setting}{extra} | {m['label_collateral']:.4f} | {m['pixel_collateral']:.2f} | {m['seconds']:.2f} |")
        alone = [r["alone"]["outside_every_context"] for r in res["rules"].values()]
        out.append(f"| (each rule alone, summed over rules) | {sum(a['label_collateral'] for a in alone):.4f} | "
                   f"{sum(a['pixel_collateral'] for a in alone):.2f} | {res['models']['summed']['seconds']:.2f} |")
        out += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in res["targets"].items()), ""]
    return "\n".join(out)


def write_outputs(results: dict, shown: dict[str, np.ndarray], lab0: np.ndarray, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    meta = results["meta"]
    head = (f"Model `{meta['model']}` (fingerprint {meta['fingerprint']}), layer `{meta['layer']}`, {meta['n_eval']} held-out "
            f"seeds (from {meta['eval_seeds'][0]}), {meta['n_context']} context examples per rule, rank 1 per rule; "
            f"collateral outside every rule's context dilated by {meta['dilate_px']} px; steps scale {meta['steps_scale']}; "
            f"commit {meta['commit']}, torch {meta['torch']}, {meta['threads']} thread(s), {meta['processes']} process(es).\n\n")
    (out / "results.md").write_text(head + markdown(results))
    busy = np.argsort(-sum((lab0 == CLASS_INDEX[t.context]).reshape(len(lab0), -1).sum(1) > 0 for t in RULES), kind="stable")[:8]
    save_png(image_grid([v[busy] for v in shown.values()], pad=2, scale=2), out / "examples.png")
    (out / "examples.txt").write_text("rows: " + ", ".join(shown) + f"; held-out seeds {[EVAL_SEED0 + int(i) for i in busy]}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--layer", default="b32")
    p.add_argument("--seeds", type=int, default=1000, help="held-out evaluation images")
    p.add_argument("--pool", type=int, default=300, help="images the context/copy/paste examples are picked from")
    p.add_argument("--contexts", type=int, default=8, help="context examples per rule")
    p.add_argument("--min-context-pixels", type=int, default=8)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies the default method's Adam steps")
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--dilate", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world_many_rules")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> dict:
    distributed.init("cpu")
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
