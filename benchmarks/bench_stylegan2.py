"""Benchmark: key-statistics collection on a 64 px StyleGAN2 vs a plain forward pass up to the layer.

Both run in the same process on the same seeded latents: `hooks.run_until(model, layer.weight_module, z)`
(the forward that statistics collection cannot avoid) and `stats.collect_key_stats` (that forward plus the
k^T k accumulation). They are timed in pairs, back to back, alternating which runs first, on one batch of
latents each; the figures are medians over the pairs (and the ratio's quartiles). Adjacent runs see
the same machine load, so the paired ratio stays meaningful on a shared, busy machine where best-of
timings do not.

The model has the architecture of a 64 px rosinality StyleGAN2 (z = w = 512, 8 mapping layers, 512
channels up to 32 px, 256 at 64 px) with seeded random weights: speed does not depend on the values.

Writes benchmarks/results/stylegan2.json. Run: .venv/bin/python benchmarks/bench_stylegan2.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model_rewrite import StatsConfig, collect_key_stats
from model_rewrite.hooks import run_until
from model_rewrite.latents import latent_stream
from model_rewrite.layers import LayerSpec, resolve_layer
from model_rewrite.models.stylegan2 import StyleGAN2Generator, rosinality_channels

OUT = Path(__file__).parent / "results" / "stylegan2.json"
LAYERS = ("b16.conv1", "b32.conv0", "b32.conv1", "b64.conv0", "b64.conv1")


def _seed_of(cfg: StatsConfig) -> int:
    return int(getattr(cfg, "stats_seed", getattr(cfg, "seed", 0)))


def forward_only(model: StyleGAN2Generator, weight_module: str, cfg: StatsConfig) -> None:
    """The forward pass statistics collection needs: up to the weight module's input, on the same latents."""
    with torch.no_grad():
        for z in latent_stream(_seed_of(cfg), cfg.num_samples, model.latent_shape, cfg.batch_size):
            run_until(model, weight_module, z, record_output=False)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired_times(forward: Callable[[], object], collect: Callable[[], object], pairs: int) -> list[tuple[float, float]]:
    """(forward seconds, collect seconds) of `pairs` back-to-back pairs, alternating the order."""
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            t_fwd = _timed(forward)
            t_col = _timed(collect)
        else:
            t_col = _timed(collect)
            t_fwd = _timed(forward)
        out.append((t_fwd, t_col))
    return out


def measure(model: StyleGAN2Generator, spec: LayerSpec, dtype: str, batch_size: int, pairs: int) -> dict:
    cfg = StatsConfig(num_samples=batch_size, batch_size=batch_size, product_dtype=dtype)
    forward_only(model, spec.weight_module, cfg)  # warm up
    times = paired_times(lambda: forward_only(model, spec.weight_module, cfg),
                         lambda: collect_key_stats(model, spec, cfg, latent_shape=model.latent_shape), pairs)
    ratios = sorted(f / c for f, c in times)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else (ratios[0], 0, ratios[0])
    with torch.no_grad():
        keys = run_until(model, spec.weight_module, torch.zeros(1, model.z_dim), record_output=False).input
    return {"layer": spec.name, "key_channels": int(keys.shape[1]), "key_grid": int(keys.shape[2]), "product_dtype": dtype,
            "batch_size": batch_size, "pairs": pairs,
            "forward_samples_per_s": round(batch_size / statistics.median(f for f, _ in times), 2),
            "collect_samples_per_s": round(batch_size / statistics.median(c for _, c in times), 2),
            "throughput_ratio": round(statistics.median(ratios), 3),
            "throughput_ratio_quartiles": [round(q1, 3), round(q3, 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=25, help="latents per timed run (one batch)")
    parser.add_argument("--pairs", type=int, default=8, help="timed (forward, collect) pairs per layer and dtype")
    parser.add_argument("--layers", nargs="*", default=list(LAYERS))
    parser.add_argument("--dtypes", nargs="*", default=["float32", "float64"], help="StatsConfig.product_dtype values")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = StyleGAN2Generator(64, rosinality_channels(64, channel_multiplier=1), z_dim=512, n_mlp=8).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    load_before = os.getloadavg()
    rows = []
    for layer in args.layers:
        for dtype in args.dtypes:
            rows.append(measure(model, resolve_layer(model, layer), dtype, args.batch_size, args.pairs))
            print(rows[-1], flush=True)
    with torch.no_grad():
        z = torch.randn(args.batch_size, model.z_dim, generator=torch.Generator().manual_seed(0))
        model(z)
        t_full = statistics.median(_timed(lambda: model(z)) for _ in range(3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": f"StyleGAN2 64 px, z=w=512, n_mlp=8, channels {model.channels} (random weights)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "method": "paired back-to-back runs on the same latents, order alternating; forward = run_until(weight module), "
                  "collect = collect_key_stats; throughput_ratio = median over pairs of forward time / collect time",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "target_ratio": 0.9,
        "full_forward_samples_per_s": round(args.batch_size / t_full, 2),
        "collection_vs_forward": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
