"""Benchmark: the joint solve at scale (issue 13) on the default face model: N = 10, 100, 1000 synthetic rules.

Rules (seeded, rank 1 each, layer b32 unless --layer): rule j pastes on a random image (seed from 0..9999) a box
of random size (8..16 px of 64) at a random place; the paste region is the context; the copy is a box of the same
size at a random place on another random image. For each N:

- prepare: each rule's directions and goal (forward passes of its paste and copy images; not part of the solve);
- closed form: `joint.joint_directions` + `jointform.closed_form_factor` (the solve proper): wall and CPU time of
  the median of `--repeats` runs, peak memory above the phase's start (VmHWM, reset through
  /proc/self/clear_refs), rank kept;
- refinement: `--steps` Adam steps of the joint loss (fewer for N = 1000: `--steps-1000`): time per step, peak memory;
- memory: peak RSS above the loaded model's (each N in a fresh process), through the preparation (the rules
  held: N key maps and goal boxes) and through the closed form;
- paste fidelity per rule (`quality.fidelity` on the paste image, against the copy-paste preview): joint closed
  form, joint refined, and each rule solved alone (closed form; for N = 1000 on a random `--alone-sample` of the
  rules), reported as the median over rules.

Memory reference per rule: the key map C_in x Hk x Wk and the weight C_in x C_out x T (float32).

    nice -n 10 python benchmarks/bench_joint_scale.py              # writes benchmarks/results/joint_scale.json
    python benchmarks/bench_joint_scale.py --sizes 10 --steps 2     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_stylegan2 import device_name
from model_rewrite import Rewriter, Selection, StatsConfig, UpdateConfig
from model_rewrite.joint import JointRefinement, JointRule, joint_directions, prepare_rule, weight_maps, with_exclusions
from model_rewrite.jointform import closed_form_factor, holds_own
from model_rewrite.masks import copy_placement, paste_patch
from model_rewrite.quality import fidelity
from model_rewrite.update import LowRankDelta

OUT = Path(__file__).parent / "results" / "joint_scale.json"


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                vals[line.split(":")[0]] = int(line.split()[1]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> int:
    """Return freed heap to the system (glibc keeps it otherwise, and RSS would count it), reset the peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _rss()[0]


class Phase:
    """Wall time, CPU time and peak memory above the start of a block."""

    def __enter__(self) -> "Phase":
        self.rss0 = _reset_peak()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self.peak_mb = (_rss()[1] - self.rss0) / 2**20


def synthetic_edits(rw: Rewriter, layer: str, n: int, seed: int, update: UpdateConfig, stats: StatsConfig) -> list:
    rng = random.Random(seed)
    res = rw.info.resolution
    edits = []
    for j in range(n):
        h, w = rng.randint(8, 16), rng.randint(8, 16)
        paste, copy = torch.zeros(res, res), torch.zeros(res, res)
        y, x = rng.randint(0, res - h), rng.randint(0, res - w)
        paste[y:y + h, x:x + w] = 1.0
        y, x = rng.randint(0, res - h), rng.randint(0, res - w)
        copy[y:y + h, x:x + w] = 1.0
        edits.append(rw.new_edit(layer, paste=Selection(rng.randrange(10000), paste),
                                 copy=Selection(rng.randrange(10000), copy), update=update, stats=stats, name=f"r{j}"))
    return edits


def paste_fidelities(rw: Rewriter, edits: list, delta: LowRankDelta | None = None) -> list[float]:
    """Fidelity of each rule on its paste image with `delta` applied (None: the model as it is)."""
    seeds = sorted({s for e in edits for s in (e.paste.seed, e.copy.seed)})
    original = dict(zip(seeds, rw.sample(seeds)))
    if delta is not None:
        rw.stack.push(delta)
    edited = dict(zip(seeds, rw.sample(seeds)))
    if delta is not None:
        rw.stack.undo()
    out = []
    for e in edits:
        copy_box, box = copy_placement(e.copy.mask, e.paste.mask)
        preview = paste_patch(original[e.paste.seed], original[e.copy.seed], e.copy.mask, copy_box, box)
        out.append(fidelity(edited[e.paste.seed], original[e.paste.seed], preview, box))
    return out


def measure(rw: Rewriter, layer: str, n: int, args: argparse.Namespace) -> dict:
    stats = StatsConfig(num_samples=args.stats_samples)
    cov = rw.stats(layer, stats).moment
    edits = synthetic_edits(rw, layer, n, args.seed + n, UpdateConfig(method="closed_form"), stats)
    spec = rw.spec(layer)
    wm = rw.model.get_submodule(spec.weight_module)
    w0 = getattr(wm, spec.param_name).detach()
    baseline = _reset_peak()  # the model and statistics loaded; each N runs in a fresh process (main)
    with Phase() as prep:
        rules: list[JointRule] = with_exclusions([prepare_rule(e, *rw.edit_goal(e)[1:]) for e in edits])
    through_prepare = (_rss()[1] - baseline) / 2**20
    phases = []
    for _ in range(args.repeats):  # the median run of the closed form (the machine is shared and noisy)
        with Phase() as cf:
            dirs, kept = joint_directions([r.dirs for r in rules], cov)
            dirs = dirs.to(w0.dtype)
            w_in, w_out = weight_maps(rules)
            factor = closed_form_factor(wm, spec, w0, dirs, rules, w_in, w_out, edits[0].update.ridge)
        phases.append(cf)
    cf = sorted(phases, key=lambda ph: ph.wall)[len(phases) // 2]
    cf_peak = max(ph.peak_mb for ph in phases)
    through_cf = max(through_prepare, (_rss()[1] - baseline) / 2**20, (_rss()[0] - baseline) / 2**20 + cf_peak)
    steps = args.steps if n < 1000 else args.steps_1000
    refine = JointRefinement(rw.model, spec, w0, dirs, rules, w_in, w_out, holds_own("own", len(rules)))
    with Phase() as rf:
        refined, losses, _ = refine.optimize(factor, steps, UpdateConfig().lr, None)
    cf_delta = LowRankDelta(spec.param_path, spec.key_axis, factor, dirs)
    fid_cf = paste_fidelities(rw, edits, cf_delta)
    fid_rf = paste_fidelities(rw, edits, LowRankDelta(spec.param_path, spec.key_axis, refined, dirs))
    sample = edits if n <= args.alone_sample else random.Random(args.seed).sample(edits, args.alone_sample)
    alone = []
    t0 = time.perf_counter()
    for e in sample:
        alone += paste_fidelities(rw, [e], rw.solve(e).delta)
    alone_s = time.perf_counter() - t0
    key_bytes = rules[0].keys.numel() * 4
    row = {"rules": n, "layer": layer, "rank_kept": len(kept), "rank_requested": n,
           "prepare": {"wall_s": round(prep.wall, 2), "peak_mb_above_baseline": round(through_prepare, 1)},
           "peak_mb_above_baseline_through_closed_form": round(through_cf, 1),
           "closed_form": {"wall_s": round(cf.wall, 3), "cpu_s": round(cf.cpu, 3), "runs_wall_s": [round(ph.wall, 3) for ph in phases],
                           "peak_mb_above_start": round(cf_peak, 1)},
           "refinement": {"steps": steps, "wall_s": round(rf.wall, 2), "wall_s_per_step": round(rf.wall / max(steps, 1), 3),
                          "peak_mb_above_start": round(rf.peak_mb, 1), "loss_first_last": [round(losses[0], 4), round(min(losses), 4)]},
           "paste_fidelity_median": {"joint_closed_form": round(statistics.median(fid_cf), 3),
                                     "joint_refined": round(statistics.median(fid_rf), 3),
                                     "alone_closed_form": round(statistics.median(alone), 3),
                                     "alone_rules_measured": len(sample), "alone_seconds": round(alone_s, 1)},
           "paste_fidelity_mean": {"joint_closed_form": round(statistics.mean(fid_cf), 3),
                                   "joint_refined": round(statistics.mean(fid_rf), 3), "alone_closed_form": round(statistics.mean(alone), 3)},
           "reference_mb": {"n_x_key_map": round(n * key_bytes / 2**20, 1),
                            "n_x_weight": round(n * w0.numel() * 4 / 2**20, 1),
                            "rules_held_in_memory": round(sum(r.keys.numel() + r.residual.numel() + r.target.numel() for r in rules) * 4 / 2**20, 1)},
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="faces")
    p.add_argument("--layer", default="b32")
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--steps", type=int, default=10, help="Adam steps of the refinement for N < 1000")
    p.add_argument("--steps-1000", type=int, default=2, help="Adam steps of the refinement for N = 1000 (timing only)")
    p.add_argument("--alone-sample", type=int, default=100, help="rules solved alone for the fidelity baseline at most")
    p.add_argument("--stats-samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="closed-form runs per N (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a busy 2-core machine two threads wait on each other)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--merge", action="store_true", help="keep the rows of other sizes already in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:  # one size, in this (fresh) process: print its row
        print("ROW " + json.dumps(measure(Rewriter(args.model), args.layer, args.one, args)), flush=True)
        return
    rows = []
    for n in args.sizes.split(","):  # a fresh process per size, so that memory freed by one is not reused by the next
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", n] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(next(line[4:] for line in out.splitlines() if line.startswith("ROW "))))
        print(json.dumps(rows[-1]), flush=True)
    if args.merge and args.out.exists():  # sizes measured in separate invocations: keep the others' rows
        done = {r["rules"] for r in rows}
        rows = sorted([r for r in json.loads(args.out.read_text())["sizes"] if r["rules"] not in done] + rows,
                      key=lambda r: r["rules"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "device": device_name("cpu"), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "method": __doc__.split("\n\n")[1], "sizes": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
