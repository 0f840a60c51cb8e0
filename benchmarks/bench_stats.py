"""Benchmark: key-statistics collection vs a plain forward pass up to the layer (same run, same latents).

Writes benchmarks/results/stats.json. Run: .venv/bin/python benchmarks/bench_stats.py
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

import torch

from model_rewrite import StatsConfig, collect_key_stats, load_generator
from model_rewrite.hooks import run_until
from model_rewrite.latents import latent_stream
from model_rewrite.layers import resolve_layer

OUT = Path(__file__).parent / "results" / "stats.json"


def _forward_only(model, spec, cfg, shape) -> None:
    with torch.no_grad():
        for z in latent_stream(cfg.stats_seed, cfg.num_samples, shape, cfg.batch_size):
            run_until(model, spec.weight_module, z, record_output=False)


def _paired(fns, repeats: int) -> tuple[list[float], float]:
    """Time two functions back to back `repeats` times, alternating their order so that machine noise is
    shared. Returns each one's median time and the median of the per-pair ratios time[0] / time[1]."""
    times: list[list[float]] = [[], []]
    for r in range(repeats):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    ratios = sorted(a / b for a, b in zip(*times))
    return [sorted(t)[len(t) // 2] for t in times], ratios[len(ratios) // 2]


def main() -> None:
    model, info = load_generator("faces")
    rows = []
    for layer in ("b16", "b32"):
        spec = resolve_layer(model, layer)
        for dtype in ("float32", "float64"):
            cfg = StatsConfig(num_samples=1000, batch_size=50, product_dtype=dtype)
            _forward_only(model, spec, StatsConfig(num_samples=100), info.latent_shape)  # warm up
            (t_fwd, t_col), ratio = _paired([lambda: _forward_only(model, spec, cfg, info.latent_shape),
                                             lambda: collect_key_stats(model, spec, cfg, latent_shape=info.latent_shape)], 8)
            rows.append({"layer": layer, "product_dtype": dtype, "samples": cfg.num_samples,
                         "forward_samples_per_s": round(cfg.num_samples / t_fwd, 1),
                         "collect_samples_per_s": round(cfg.num_samples / t_col, 1),
                         "throughput_ratio": round(ratio, 3)})
            print(rows[-1])
    # memory: the accumulator is C_in x C_in float64 whatever the sample count; peak RSS stays flat
    spec = resolve_layer(model, "b32")
    memory = []
    for n in (500, 4000):
        collect_key_stats(model, spec, StatsConfig(num_samples=n), latent_shape=info.latent_shape)
        memory.append({"samples": n, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                       "accumulator_bytes": 128 * 128 * 8})
    print(memory)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "faces", "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                               "torch": torch.__version__, "collection_vs_forward": rows, "memory": memory}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
