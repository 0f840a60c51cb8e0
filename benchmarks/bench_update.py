"""Benchmark: edit latency and quality on the default face model (the add-glasses example).

Compares, in one run and on the same inputs: the closed form alone, the reference setting (2000 Adam steps,
lr 0.05, no preserve term) and our default (`UpdateConfig()`), and times a full edit (directions + solve +
16-image preview). Also: how the edit changes with the number of statistics samples.
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
from model_rewrite.config import RenderConfig
from model_rewrite.report import change_report, fire_regions

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "update.json"
HELDOUT = list(range(1000, 1016))


def measure(rw: Rewriter, spec, label: str) -> dict:
    """Solve, apply, render the 16-image preview, measure the change; then undo."""
    t0 = time.perf_counter()
    result = rw.solve(spec)
    t_solve = time.perf_counter() - t0
    before = rw.sample(HELDOUT)
    rw.stack.push(result.delta, label)
    after = rw.sample(HELDOUT)
    t_full = time.perf_counter() - t0
    heats = rw.heat(spec.layer, result.delta.dirs, HELDOUT)
    q = RenderConfig().fire_quantile
    regions, th = fire_regions(heats, rw.info.resolution, q)
    rep = change_report(before, after, regions, th, q)
    rw.stack.undo()
    return {"setting": label, "steps": spec.update.steps, "preserve": spec.update.preserve, "method": spec.update.method,
            "solve_s": round(t_solve, 3), "full_edit_s": round(t_full, 3), "goal_loss_l1": round(result.goal_loss, 5),
            "closed_form_loss": round(result.closed_form_loss, 5), "inside_change": round(rep.inside_change, 4),
            "outside_change": round(rep.outside_change, 4), "ratio": round(rep.ratio, 2)}


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
        "reference (2000 steps, lr 0.05, no preserve)": UpdateConfig(steps=2000, preserve=0.0),
        "reference steps with preserve": UpdateConfig(steps=2000),
        "our default without preserve": UpdateConfig(preserve=0.0),
    }
    rows = [cold] + [measure(rw, dataclasses.replace(spec, update=u), name) for name, u in settings.items()]
    for r in rows:
        print(r)
    by_n = []
    for n in (100, 300, 1000, 3000):
        r = measure(rw, dataclasses.replace(spec, stats=StatsConfig(num_samples=n)), f"stats {n}")
        by_n.append({"num_samples": n, **{k: r[k] for k in ("goal_loss_l1", "inside_change", "outside_change", "ratio")}})
        print(by_n[-1])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "faces", "edit": "examples/add-glasses/edit.json", "layer": spec.layer,
                               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
                               "load_model_s": round(t_load, 3), "stats_1000_s": round(t_stats, 3), "settings": rows,
                               "by_stats_samples": by_n, "heldout_seeds": HELDOUT}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
