"""Timing shared by the benchmarks: interleaved runs, so that machine noise falls on all contenders alike.

These machines are shared and noisy; best-of timings of one contender after another compare different
loads. Here every round runs each contender once, back to back, rotating the order, and ratios are
taken within a round (same load) before the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it (no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleaved(fns: Mapping[str, Callable[[], object]], rounds: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each function in each of `rounds` rounds; round r starts at contender r mod n."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict[str, float | list[float]]:
    """Median and quartiles of the per-round ratios numerator[r] / denominator[r]."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": round(med, 3), "quartiles": [round(q1, 3), round(q3, 3)]}


def per_second(count: int, seconds: list[float]) -> float:
    """`count` items per second at the median time."""
    return round(count / statistics.median(seconds), 2)
