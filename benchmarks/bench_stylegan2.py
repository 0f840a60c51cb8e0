"""Benchmark: key-statistics collection on a StyleGAN2, against plain forward passes, and one edit's time.

For each layer, three contenders run interleaved on the same seeded latents (see timing.py):
- full forward: `model(z)`, the plain forward pass that generates the images;
- forward to the layer: `hooks.run_until(model, weight module, z)`, the part of the forward pass that
  statistics collection cannot avoid (the strictest baseline);
- collect: `stats.collect_key_stats`, that forward plus the k^T k accumulation.
Ratios are per round (same load), medians over rounds with quartiles.

`--edit` also times one edit through the public API on the same model: statistics for the layer
(`Rewriter.stats`), then solve + apply + a 16-image preview with the default UpdateConfig.

The default model has the architecture of a 64 px rosinality StyleGAN2 (z = w = 512, 8 mapping layers,
512 channels up to 32 px, 256 at 64 px) with seeded random weights: speed does not depend on the values.
The GPU configuration of issue 4 is `--resolution 256 --channel-multiplier 2 --device cuda --edit --batch-size 32
--layers b32.conv1 b64.conv1 b128.conv1 b256.conv1` (512 channels up to 64 px).

Writes benchmarks/results/stylegan2.json (or --out). Run: .venv/bin/python benchmarks/bench_stylegan2.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig, collect_key_stats
from model_rewrite.hooks import run_until
from model_rewrite.latents import latent_stream
from model_rewrite.layers import LayerSpec, resolve_layer
from model_rewrite.models.stylegan2 import StyleGAN2Generator, rosinality_channels
from timing import interleaved, per_second, ratio_summary, sync

OUT = Path(__file__).parent / "results" / "stylegan2.json"
LAYERS = ("b16.conv1", "b32.conv0", "b32.conv1", "b64.conv0", "b64.conv1")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def measure(model: StyleGAN2Generator, spec: LayerSpec, dtype: str, batch_size: int, rounds: int, device: str) -> dict:
    cfg = StatsConfig(num_samples=batch_size, batch_size=batch_size, product_dtype=dtype)
    (z,) = latent_stream(cfg.stats_seed, batch_size, model.latent_shape, batch_size)  # collect's latents
    z = z.to(device)

    def full() -> None:
        with torch.no_grad():
            model(z)

    def to_layer() -> None:
        with torch.no_grad():
            run_until(model, spec.weight_module, z, record_output=False)

    def collect() -> None:
        collect_key_stats(model, spec, cfg, latent_shape=model.latent_shape)

    fns = {"full_forward": full, "forward_to_layer": to_layer, "collect": collect}
    interleaved(fns, 1, device)  # warm up
    t = interleaved(fns, rounds, device)
    with torch.no_grad():
        keys = run_until(model, spec.weight_module, z[:1], record_output=False).input
    return {"layer": spec.name, "key_channels": int(keys.shape[1]), "key_grid": int(keys.shape[2]), "product_dtype": dtype,
            "batch_size": batch_size, "rounds": rounds,
            "full_forward_samples_per_s": per_second(batch_size, t["full_forward"]),
            "forward_to_layer_samples_per_s": per_second(batch_size, t["forward_to_layer"]),
            "collect_samples_per_s": per_second(batch_size, t["collect"]),
            "ratio_vs_full_forward": ratio_summary(t["full_forward"], t["collect"]),
            "ratio_vs_forward_to_layer": ratio_summary(t["forward_to_layer"], t["collect"])}


def box(res: int, y0: float, y1: float, x0: float, x1: float) -> torch.Tensor:
    """A rectangular mask (res, res) from fractions of the image side."""
    m = torch.zeros(res, res)
    m[int(y0 * res):int(y1 * res), int(x0 * res):int(x1 * res)] = 1.0
    return m


def time_edit(model: StyleGAN2Generator, layer: str, num_samples: int, device: str) -> dict:
    """Statistics, then solve + apply + 16-image preview of one copy-paste edit, through the public API."""
    with tempfile.TemporaryDirectory() as cache:
        rw = Rewriter(model, device=device, cache_dir=cache)
        res = model.resolution
        paste = Selection(1, box(res, 0.2, 0.45, 0.2, 0.45))
        edit = rw.new_edit(layer, paste=paste, copy=Selection(2, box(res, 0.5, 0.75, 0.5, 0.75)),
                           context=[paste, Selection(3, box(res, 0.3, 0.6, 0.3, 0.6))],
                           stats=StatsConfig(num_samples=num_samples), update=UpdateConfig())
        sync(device)
        t0 = time.perf_counter()
        rw.stats(layer, edit.stats)
        sync(device)
        t_stats = time.perf_counter() - t0
        rw.sample([0])  # warm up the preview path
        sync(device)
        t0 = time.perf_counter()
        result = rw.solve(edit)
        sync(device)
        t_solve = time.perf_counter() - t0
        rw.stack.push(result.delta, "bench")
        rw.sample(list(range(1000, 1016)))
        sync(device)
        t_edit = time.perf_counter() - t0
    return {"layer": layer, "stats_samples": num_samples, "stats_s": round(t_stats, 3), "solve_s": round(t_solve, 3),
            "solve_apply_preview16_s": round(t_edit, 3), "steps": edit.update.steps, "goal_loss_l1": round(result.goal_loss, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channel-multiplier", type=int, default=1, help="rosinality's channel multiplier")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=25, help="latents per timed run (one batch)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per layer and dtype")
    parser.add_argument("--layers", nargs="*", default=None, help=f"default: {' '.join(LAYERS)} (64 px)")
    parser.add_argument("--dtypes", nargs="*", default=["float32"], help="StatsConfig.product_dtype values")
    parser.add_argument("--edit", action="store_true", help="also time one edit (stats + solve + apply + preview)")
    parser.add_argument("--edit-layer", default="b32.conv1")
    parser.add_argument("--edit-samples", type=int, default=1000, help="StatsConfig.num_samples of the timed edit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    channels = rosinality_channels(args.resolution, channel_multiplier=args.channel_multiplier)
    model = StyleGAN2Generator(args.resolution, channels, z_dim=512, n_mlp=8).to(args.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    load_before = os.getloadavg()
    rows = []
    for layer in args.layers or LAYERS:
        for dtype in args.dtypes:
            rows.append(measure(model, resolve_layer(model, layer), dtype, args.batch_size, args.rounds, args.device))
            print(rows[-1], flush=True)
    edit = time_edit(model, args.edit_layer, args.edit_samples, args.device) if args.edit else None
    if edit:
        print(edit, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": f"StyleGAN2 {args.resolution} px, z=w=512, n_mlp=8, channels {list(model.channels)} (random weights)",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "method": "interleaved rounds on the same latents (benchmarks/timing.py); full_forward = model(z), forward_to_layer = "
                  "run_until(weight module), collect = collect_key_stats; ratio_vs_X = median over rounds of X time / collect time",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "target_ratio": 0.9,
        "collection_vs_forward": rows,
        "edit": edit}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
