"""Which rules interfere, and why: the six many-rules rules (bench_many_rules.py) two at a time.

For every pair of rules: each rule's exact success when the pair is solved jointly (`Rewriter.apply_many`) and
stacked (the second solved against the weights the first left), as a fraction of its success alone; and the
overlap of the two rules' context directions over the layer's keys (`directions.response_overlap`, what
`apply` warns about from `interference.OVERLAP_WARN`): for single directions

    overlap_ij = |d_i^T C d_j| / sqrt(d_i^T C d_i  d_j^T C d_j)       (C: the layer's key second moment),

the uncentred correlation of the two rules' responses d.k over the keys the layer sees (1 when one rule fires
exactly where the other does); for rank r, the largest canonical correlation of the two rules' responses.
A rank-r change along the stacked directions can only tell two rules' contexts apart along what their
directions do not share; this table shows where that runs out.
`--rank` sets every rule's rank (alone and together); `--ridge` the closed form's relative ridge.

    nice -n 10 python benchmarks/world/bench_rule_pairs.py                      # closed form, rank 1, 300 seeds
    python benchmarks/world/bench_rule_pairs.py --rank 2 --out /tmp/pairs-r2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_many_rules import RULES, prepare_rule
from bench_world import DEFAULT_MODEL, EVAL_SEED0, POOL_SEED0, ROOT, _git_commit, measure
from model_rewrite.config import StatsConfig, UpdateConfig
from model_rewrite.directions import response_overlap
from model_rewrite.render import to_uint8
from model_rewrite.rewrite import Rewriter
from world import labels_from_image


def run(args: argparse.Namespace) -> dict:
    t_all = time.perf_counter()
    rw = Rewriter(str(args.model), cache_dir=args.out / ".cache")
    stats_cfg = StatsConfig(num_samples=args.stats_samples)
    moment = rw.stats(args.layer, stats_cfg).moment
    pool_images = to_uint8(rw.sample(list(range(POOL_SEED0, POOL_SEED0 + args.pool))))
    pool_labels = labels_from_image(pool_images)
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.seeds))
    before = to_uint8(rw.sample(seeds))
    preps = [prepare_rule(rw, t, pool_labels, pool_images, args.contexts, 8) for t in RULES]
    cfg = UpdateConfig(method="closed_form", ridge=args.ridge)
    edits = [rw.new_edit(args.layer, p.paste, p.copy, p.context, update=cfg if t.copy else replace(cfg, erase=True),
                         stats=stats_cfg, name=t.name) for t, p in zip(RULES, preps)]
    edits = [replace(e, keys=replace(e.keys, rank=args.rank)) for e in edits]
    names = [t.name for t in RULES]

    def success(indices: list[int]) -> dict[str, float]:
        after = to_uint8(rw.sample(seeds))
        rw.stack.revert_all()
        return {names[i]: measure(before, after, RULES[i], args.dilate)["success"] for i in indices}

    alone: dict[str, float] = {}
    for i, e in enumerate(edits):
        rw.apply(e)
        alone |= success([i])
    dirs = [rw.edit_directions(e) for e in edits]
    pairs = []
    for i, j in itertools.combinations(range(len(edits)), 2):
        rw.apply_many([edits[i], edits[j]])
        joint = success([i, j])
        rw.apply(edits[i])
        rw.apply(edits[j])
        seq = success([i, j])
        ratio = lambda r, n: r[n] / alone[n] if alone[n] > 0 else float("nan")  # noqa: E731
        pairs.append({"rules": [names[i], names[j]], "overlap": response_overlap(dirs[i], dirs[j], moment),
                      "joint_over_alone": [ratio(joint, names[i]), ratio(joint, names[j])],
                      "sequential_over_alone": [ratio(seq, names[i]), ratio(seq, names[j])]})
        print(pairs[-1], flush=True)
    return {"meta": {"model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
                     "layer": args.layer, "rank": args.rank, "ridge": args.ridge, "n_eval": args.seeds,
                     "n_context": args.contexts, "commit": _git_commit(), "torch": torch.__version__,
                     "seconds": round(time.perf_counter() - t_all, 1)},
            "alone": alone, "names": names, "pairs": pairs}


def markdown(res: dict) -> str:
    m = res["meta"]
    out = [f"Layer `{m['layer']}`, closed form, rank {m['rank']} per rule, ridge {m['ridge']}, {m['n_eval']} held-out seeds, "
           f"{m['n_context']} context examples per rule; commit {m['commit']}.", "",
           "Success alone: " + ", ".join(f"{n} {v:.3f}" for n, v in res["alone"].items()), "",
           "| rule A | rule B | overlap | A joint / alone | B joint / alone | A stacked / alone | B stacked / alone |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in sorted(res["pairs"], key=lambda p: -p["overlap"]):
        (a, b), (ja, jb), (sa, sb) = p["rules"], p["joint_over_alone"], p["sequential_over_alone"]
        flag = lambda v: f"**{v:.2f}**" if v < 0.9 else f"{v:.2f}"  # noqa: E731
        out.append(f"| {a} | {b} | {p['overlap']:.2f} | {flag(ja)} | {flag(jb)} | {flag(sa)} | {flag(sb)} |")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--layer", default="b32")
    p.add_argument("--seeds", type=int, default=300, help="held-out evaluation images")
    p.add_argument("--pool", type=int, default=300)
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--ridge", type=float, default=UpdateConfig().ridge)
    p.add_argument("--dilate", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world_rule_pairs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    (args.out / "results.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
