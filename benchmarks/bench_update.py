"""Benchmark: edit latency and quality on the default face model (the add-glasses example).

Compares, in one run and on the same inputs: the closed form alone, our default (`UpdateConfig()`), the
authors' published algorithm (`UpdateConfig(method="reference")`, reference.py) and variants of our
optimiser; times a full edit (directions + solve + 16-image preview) and scores each with the quality
report (paste fidelity, transfer, locality, collateral). Also: how the edit changes with the number of
statistics samples, and how long `suggest` takes with cached statistics.
Writes benchmarks/results/update.json. Run: .venv/bin/python benchmarks/bench_update.py
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from model_rewrite import Rewriter, StatsConfig, UpdateConfig, load_edit
from model_rewrite.quality import quality_report

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "update.json"
HELDOUT = list(range(1000, 1016))


def measure(rw: Rewriter, spec, label: str) -> dict:
    """Solve, apply, render the 16-image preview; then the quality report; then undo."""
    t0 = time.perf_counter()
    result = rw.solve(spec)
    t_solve = time.perf_counter() - t0
    entry = rw.stack.push(result.delta, label, spec)
    rw.sample(HELDOUT)
    t_full = time.perf_counter() - t0
    q = quality_report(rw, entry.id, HELDOUT)
    rw.stack.undo()
    return {"setting": label, "method": spec.update.method, "steps": spec.update.planned_steps,
            "preserve": spec.update.preserve, "solve_s": round(t_solve, 3), "full_edit_s": round(t_full, 3),
            "goal_loss_l1": round(result.goal_loss, 5), "paste_fidelity": round(q.paste_fidelity, 4),
            "transfer": round(q.transfer, 4) if q.transfer is not None else None, "fires_on": q.fires_on,
            "inside_change": round(q.change.inside_change, 4), "outside_change": round(q.change.outside_change, 4),
            "ratio": round(q.change.ratio, 2), "collateral": round(q.collateral, 4)}


def main() -> None:
    spec, _ = load_edit(ROOT / "examples" / "add-glasses" / "edit.json")
    t0 = time.perf_counter()
    rw = Rewriter("faces", cache_dir=ROOT / ".cache" / "bench")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    rw.stats(spec.layer, spec.stats)
    t_stats = time.perf_counter() - t0
    cold = measure(rw, spec, "our default, first edit in the process (cold)")
    settings = {
        "closed form only": UpdateConfig(method="closed_form"),
        "our default": UpdateConfig(),
        "the authors' algorithm (method reference)": UpdateConfig(method="reference"),
        "our optimiser, 2000 steps, no preserve": UpdateConfig(steps=2000, preserve=0.0),
        "our optimiser, 2000 steps": UpdateConfig(steps=2000),
        "our default without preserve": UpdateConfig(preserve=0.0),
    }
    rows = [cold] + [measure(rw, dataclasses.replace(spec, update=u), name) for name, u in settings.items()]
    for r in rows:
        print(r)
    ours, ref = rows[2], rows[3]
    speedup = {"solve": round(ref["solve_s"] / ours["solve_s"], 1), "full_edit": round(ref["full_edit_s"] / ours["full_edit_s"], 1)}
    print("reference / our default time:", speedup)
    for layer in ("b8", "b16", "b64"):
        rw.stats(layer, spec.stats)  # suggest is timed with cached statistics
    t0 = time.perf_counter()
    cands = rw.suggest(spec)
    t_suggest = time.perf_counter() - t0
    suggest = {"seconds": round(t_suggest, 2), "candidates": len(cands), "best": [cands[0].layer, cands[0].rank],
               "table": [c.to_dict() for c in cands]}
    print(f"suggest: {t_suggest:.1f} s for {len(cands)} candidates, best {cands[0].layer} rank {cands[0].rank}")
    by_n = []
    for n in (100, 300, 1000, 3000):
        r = measure(rw, dataclasses.replace(spec, stats=StatsConfig(num_samples=n)), f"stats {n}")
        by_n.append({"num_samples": n, **{k: r[k] for k in ("goal_loss_l1", "paste_fidelity", "transfer", "inside_change",
                                                              "outside_change", "ratio")}})
        print(by_n[-1])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "faces", "edit": "examples/add-glasses/edit.json", "layer": spec.layer,
                               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
                               "load_model_s": round(t_load, 3), "stats_1000_s": round(t_stats, 3), "settings": rows,
                               "reference_over_default_time": speedup, "suggest_cached_stats": suggest,
                               "by_stats_samples": by_n, "heldout_seeds": HELDOUT}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
