"""Does `suggest` pick the (layer, rank) that works best by exact labels? Six world rules, nine configurations each.

For each rule of `bench_many_rules.RULES` (the three of bench_world, on which suggest's ranking rule was chosen,
and three more it never saw: cloud_to_sky, door_to_wall, tower_to_wall) this runs the library's
`Rewriter.suggest` over layers b8, b16, b32 and ranks 1, 2, 4 (closed-form candidates, quality report on
seeds 200000..), then solves every configuration with the default method and measures it with the world's
labeller on held-out seeds 100000.. (exact success and label collateral, as bench_world).

"Best" is the configuration with the highest exact pixel success among those with label collateral at most
`--collateral-bound` (0.05, as bench_world); suggest *hits* when its pick is acceptable and its success is at
least the best's minus `--tie` (0.01: two configurations closer than that are not told apart by 300 images).
A best under 0.01 success rewrites nothing; a hit against it is called vacuous. The pick of the ranking rule
suggest used before (mean of transfer and paste fidelity, locality for erase; quality collateral over 0.05 last)
is scored the same way from the same candidates, so the two rules are compared on one run.

    nice -n 10 python benchmarks/world/bench_suggest.py      # benchmarks/results/world_suggest/
    nice -n 10 python benchmarks/world/bench_suggest.py --pool-from 50000 --out benchmarks/results/world_suggest_fresh
    python benchmarks/world/bench_suggest.py --seeds 40 --suggest-seeds 8 --rules dome_to_tree --out /tmp/s
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import bench_many_rules
import bench_world
from bench_many_rules import RULES, prepare_rule
from bench_world import DEFAULT_MODEL, EVAL_SEED0, ROOT, SUGGEST_SEED0, _git_commit, measure, read_truth
from model_rewrite.config import StatsConfig, UpdateConfig
from model_rewrite.render import generate, to_uint8
from model_rewrite.rewrite import Rewriter
from model_rewrite.suggest import Candidate
from world import labels_from_image

SEEN = ("dome_to_tree", "erase_windows", "roof_to_dome")  # the rules suggest's ranking rule was chosen on


def previous_order(cands: list[Candidate]) -> list[Candidate]:
    """The ranking suggest used before: mean of transfer and paste fidelity (locality for erase edits); a
    quality collateral over 0.05 puts a candidate after all others."""
    def score(c: Candidate) -> float:
        q = c.quality
        if q.paste_fidelity is None:
            return q.change.ratio
        return ((q.transfer or 0.0) + q.paste_fidelity) / 2
    ok = [c for c in cands if c.quality is not None]
    return sorted(ok, key=lambda c: (c.quality.collateral > 0.05, -score(c)))


def judge(pick: tuple[str, int], exact: dict, bound: float, tie: float) -> dict:
    """Hit or miss of `pick` against the best acceptable configuration of `exact` {(layer, rank): figures}."""
    ok = {k: v for k, v in exact.items() if v["label_collateral"] <= bound}
    best = max(ok, key=lambda k: ok[k]["success"]) if ok else None
    p = exact[pick]
    hit = best is not None and pick in ok and p["success"] >= exact[best]["success"] - tie
    return {"pick": f"{pick[0]} r{pick[1]}", "pick_success": p["success"], "pick_label_collateral": p["label_collateral"],
            "best": f"{best[0]} r{best[1]}" if best else None, "best_success": exact[best]["success"] if best else None,
            "hit": bool(hit), "vacuous": best is None or exact[best]["success"] < 0.01}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    t_all = time.perf_counter()
    # a fresh draw of the rules' examples: the pool the context, copy and paste images are picked from starts at
    # --pool-from (both modules read their POOL_SEED0 when they pick)
    bench_world.POOL_SEED0 = bench_many_rules.POOL_SEED0 = pool0 = args.pool_from
    if not (pool0 + args.pool <= EVAL_SEED0 or pool0 >= SUGGEST_SEED0 + args.suggest_seeds):
        raise SystemExit("--pool-from must keep the pool apart from the evaluation and suggest seeds")
    rw = Rewriter(str(args.model), cache_dir=args.out / ".cache")
    stats_cfg = StatsConfig(num_samples=args.stats_samples)
    for layer in args.layers:
        rw.stats(layer, stats_cfg)
    pool_images = to_uint8(rw.sample(list(range(pool0, pool0 + args.pool))))
    pool_labels = labels_from_image(pool_images)
    eval_seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    z_eval = rw.latents(eval_seeds)
    before = to_uint8(generate(rw.model, z_eval))
    suggest_seeds = list(range(SUGGEST_SEED0, SUGGEST_SEED0 + args.suggest_seeds))
    results: dict = {"meta": {"model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
                              "layers": args.layers, "ranks": args.ranks, "n_eval": len(eval_seeds),
                              "suggest_seeds": [suggest_seeds[0], suggest_seeds[-1]], "collateral_bound": args.collateral_bound,
                              "tie": args.tie, "pool_from": pool0, "commit": _git_commit(), "torch": torch.__version__, "seen": list(SEEN)},
                     "rules": {}}
    for task in [t for t in RULES if not args.rules or t.name in args.rules]:
        t0 = time.perf_counter()
        prep = prepare_rule(rw, task, pool_labels, pool_images, args.contexts, args.min_context_pixels)
        truth = read_truth(before, task)
        base = rw.new_edit(args.layers[-1], prep.paste, prep.copy, prep.context, stats=stats_cfg, name=task.name,
                           update=UpdateConfig(erase=task.copy is None))
        cands = rw.suggest(base, layers=args.layers, ranks=args.ranks, seeds=suggest_seeds)
        suggest_s = time.perf_counter() - t0
        exact: dict = {}
        for c in cands:
            if c.quality is None:
                continue
            entry = rw.apply(replace(base, layer=c.layer, keys=replace(base.keys, rank=c.rank)))
            try:
                after = to_uint8(generate(rw.model, z_eval))
            finally:
                rw.stack.remove(entry.id)
            m = measure(before, after, task, args.dilate, truth)
            exact[(c.layer, c.rank)] = {"success": m["success"], "object_success": m["object_success"],
                                        "label_collateral": m["label_collateral"]}
        rows = []
        for c in cands:
            q = c.quality
            rows.append({**c.to_dict(), "inside_change": q.change.inside_change if q else None,
                         "outside_change": q.change.outside_change if q else None,
                         **{f"exact_{k}": v for k, v in exact.get((c.layer, c.rank), {}).items()}})
        now = judge((cands[0].layer, cands[0].rank), exact, args.collateral_bound, args.tie)
        old_pick = previous_order(cands)[0]
        before_rule = judge((old_pick.layer, old_pick.rank), exact, args.collateral_bound, args.tie)
        results["rules"][task.name] = {"seen": task.name in SEEN, "suggest": now, "previous_rule": before_rule,
                                       "candidates": rows, "suggest_seconds": round(suggest_s, 2),
                                       "seconds": round(time.perf_counter() - t0, 2)}
        print(f"{task.name:14s} suggest {now['pick']:7s} ({now['pick_success']:.3f}, coll {now['pick_label_collateral']:.3f})"
              f" previous {before_rule['pick']:7s} best {now['best']} ({now['best_success'] or 0:.3f}) "
              f"hit {now['hit']} (previous {before_rule['hit']}) {time.perf_counter() - t0:.0f}s", flush=True)
    for group, names in (("seen", [n for n in results["rules"] if n in SEEN]),
                         ("unseen", [n for n in results["rules"] if n not in SEEN])):
        for who in ("suggest", "previous_rule"):
            rs = [results["rules"][n][who] for n in names]
            results.setdefault("hits", {})[f"{who}@{group}"] = {
                "hits": sum(r["hit"] for r in rs), "of": len(rs), "vacuous": sum(r["vacuous"] for r in rs)}
    results["meta"]["total_seconds"] = round(time.perf_counter() - t_all, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = ["| rule | seen | suggest picks (success, label coll.) | previous rule picks | best (<= bound) | hit now / before |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results["rules"].items():
        s, p = r["suggest"], r["previous_rule"]
        best = f"{s['best']} ({s['best_success']:.3f})" if s["best"] else "none"
        lines.append(f"| {name} | {'yes' if r['seen'] else 'no'} | {s['pick']} ({s['pick_success']:.3f}, "
                     f"{s['pick_label_collateral']:.3f}) | {p['pick']} ({p['pick_success']:.3f}, {p['pick_label_collateral']:.3f}) "
                     f"| {best}{' (vacuous)' if s['vacuous'] else ''} | {'hit' if s['hit'] else 'miss'} / "
                     f"{'hit' if p['hit'] else 'miss'} |")
    lines += ["", "| rules | suggest now | previous rule |", "| --- | --- | --- |"]
    for group in ("seen", "unseen"):
        a, b = results["hits"][f"suggest@{group}"], results["hits"][f"previous_rule@{group}"]
        lines.append(f"| {group} | {a['hits']} of {a['of']} | {b['hits']} of {b['of']} |")
    lines += ["", "Candidates (quality report on the suggest seeds; exact figures of the default solve):", "",
              "| rule | layer | rank | score | transfer | paste fid. | inside | outside | locality | collateral | fires | "
              "exact success | label coll. |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, r in results["rules"].items():
        for c in r["candidates"]:
            lines.append(f"| {name} | {c['layer']} | {c['rank']} | {f(c['score'])} | {f(c['transfer'])} | "
                         f"{f(c['paste_fidelity'])} | {f(c['inside_change'])} | {f(c['outside_change'])} | "
                         f"{f(c['locality'])} | {f(c['collateral'])} | {c['fires_on']} | {f(c.get('exact_success'))} | "
                         f"{f(c.get('exact_label_collateral'))} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--layers", type=lambda t: [x for x in t.split(",") if x], default=["b8", "b16", "b32"])
    p.add_argument("--ranks", type=lambda t: [int(x) for x in t.split(",") if x], default=[1, 2, 4])
    p.add_argument("--rules", type=lambda t: [x for x in t.split(",") if x], default=[], help="only these rules")
    p.add_argument("--seeds", type=int, default=300, help="held-out evaluation images")
    p.add_argument("--suggest-seeds", type=int, default=32, help=f"held-out seeds suggest scores on (from {SUGGEST_SEED0})")
    p.add_argument("--pool", type=int, default=300)
    p.add_argument("--pool-from", type=int, default=0, help="first seed of the pool the examples are picked from "
                   "(0: bench_world's draw; another value: new examples of the same rules)")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--min-context-pixels", type=int, default=8)
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--dilate", type=int, default=3)
    p.add_argument("--collateral-bound", type=float, default=0.05)
    p.add_argument("--tie", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world_suggest")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


if __name__ == "__main__":
    run(parse_args())
