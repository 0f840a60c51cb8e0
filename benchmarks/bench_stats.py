"""Benchmark: key-statistics collection on the default face model, against plain forward passes.

Three contenders per layer run interleaved on the same 1000 seeded latents (see timing.py): the full
forward pass (`model(z)`, generating the images), the forward pass up to the layer (`hooks.run_until`,
the part collection cannot avoid: the strictest baseline) and `collect_key_stats` (that forward plus the
k^T k accumulation). Also: peak memory at 500 and 4000 samples (the accumulator is C_in x C_in).

Writes benchmarks/results/stats.json. Run: .venv/bin/python benchmarks/bench_stats.py
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch

from bench_stylegan2 import device_name
from model_rewrite import StatsConfig, collect_key_stats, load_generator
from model_rewrite.hooks import run_until
from model_rewrite.latents import latent_stream
from model_rewrite.layers import resolve_layer
from timing import interleaved, per_second, ratio_summary

OUT = Path(__file__).parent / "results" / "stats.json"


def measure(model, spec, info, dtype: str, rounds: int) -> dict:
    cfg = StatsConfig(num_samples=1000, batch_size=50, product_dtype=dtype)

    def batches():
        return latent_stream(cfg.stats_seed, cfg.num_samples, info.latent_shape, cfg.batch_size)

    def full() -> None:
        with torch.no_grad():
            for z in batches():
                model(z)

    def to_layer() -> None:
        with torch.no_grad():
            for z in batches():
                run_until(model, spec.weight_module, z, record_output=False)

    fns = {"full_forward": full, "forward_to_layer": to_layer,
           "collect": lambda: collect_key_stats(model, spec, cfg, latent_shape=info.latent_shape)}
    interleaved(fns, 1)  # warm up
    t = interleaved(fns, rounds)
    n = cfg.num_samples
    return {"layer": spec.name, "product_dtype": dtype, "samples": n, "rounds": rounds,
            "full_forward_samples_per_s": per_second(n, t["full_forward"]),
            "forward_to_layer_samples_per_s": per_second(n, t["forward_to_layer"]),
            "collect_samples_per_s": per_second(n, t["collect"]),
            "ratio_vs_full_forward": ratio_summary(t["full_forward"], t["collect"]),
            "ratio_vs_forward_to_layer": ratio_summary(t["forward_to_layer"], t["collect"])}


def main() -> None:
    model, info = load_generator("faces")
    load_before = os.getloadavg()
    rows = []
    for layer in ("b16", "b32"):
        for dtype in ("float32", "float64"):
            rows.append(measure(model, resolve_layer(model, layer), info, dtype, rounds=8))
            print(rows[-1], flush=True)
    # memory: the accumulator is C_in x C_in float64 whatever the sample count; peak RSS stays flat
    spec = resolve_layer(model, "b32")
    memory = []
    for n in (500, 4000):
        st = collect_key_stats(model, spec, StatsConfig(num_samples=n), latent_shape=info.latent_shape)
        memory.append({"samples": n, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                       "accumulator_bytes": st.dim * st.dim * 8})
    print(memory)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "model": "faces (DCGAN 64 px)", "device": device_name("cpu"), "torch": torch.__version__,
        "method": "interleaved rounds of 1000 latents in batches of 50 (benchmarks/timing.py); ratio_vs_X = median over "
                  "rounds of X time / collect time",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "target_ratio": 0.9, "collection_vs_forward": rows, "memory": memory}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
