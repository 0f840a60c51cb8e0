"""Mutation testing of the core's math and data modules with mutmut, one module at a time.

Each module is mutated in its own scratch copy (build/mutation/MODULE: the package, the tests and a
pyproject.toml holding mutmut's settings) and checked against the focused test subset that exercises it
(TESTS below), so a run never executes the whole suite. Results go to benchmarks/results/mutation.json
under a label (e.g. "before" and "after" a change) and to mutation.md beside it.

A surviving mutant either gets a test that kills it or is listed in EQUIVALENT below (matched by the
module, the function and the mutated line, so the entry outlives mutmut's renumbering) with the reason
why no test can tell it from the original.

    pip install -e '.[test,mutation]'
    python scripts/mutation.py                    # every module, label "after"
    python scripts/mutation.py directions masks --label before --children 2
    python scripts/mutation.py --report           # apply EQUIVALENT to the stored results, rewrite mutation.md
    python scripts/mutation.py solve --resume     # go on with an interrupted run (other sessions' cleanups end runs)
    python scripts/mutation.py --collect ""       # reread finished scratch copies (e.g. after parallel runs)

Several modules may run at once in separate processes (each its own scratch copy) with --results naming a file
per process; --collect then gathers them.

Not part of CI: the whole run takes about an hour on the shared 2-core machine (times per module in mutation.md).
mutmut runs under `nice -n 10` with one OpenMP thread per test process. mutmut does not mutate decorated functions
(the context managers of hooks.py, EditStack.without/lifted, solve.single_thread): their tests check them directly
(nested use, exceptions, the restored state).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
WORK = ROOT / "build" / "mutation"
TARGET = 0.85  # killed fraction per module (equivalent mutants left out)

# module -> the tests that exercise it (files that do not exist yet are left out, so an old checkout runs too)
TESTS: dict[str, list[str]] = {
    "directions": ["tests/test_directions.py"],
    "update": ["tests/test_update.py", "tests/test_solve.py"],
    "solve": ["tests/test_solve.py", "tests/test_update.py"],
    "stats": ["tests/test_stats.py"],
    "edits": ["tests/test_edits.py", "tests/test_edit_format.py"],
    "stack": ["tests/test_stack.py", "tests/test_edits.py"],
    "masks": ["tests/test_masks.py", "tests/test_goals.py"],
    "hooks": ["tests/test_hooks.py"],
    "goals": ["tests/test_goals.py", "tests/test_update.py"],
    "report": ["tests/test_report.py"],
    "quality": ["tests/test_quality.py"],
}

# Survivors that no test can kill: (module, function, mutated line as mutmut writes it, reason).
# The line is the '+' side of the mutant's diff, stripped of surrounding whitespace.
CPU = "a device move: every tensor of the test suite is on the CPU, where it changes nothing"
PROMOTES = "float32 values enter products with float64 tensors, which promote them exactly"
SUM64 = "a float32 product added in place to the float64 sum is converted exactly, as .to(float64) does"
F32 = "the means compared are float32 values, and no float32 value equals 1e-8: the two comparisons never differ"
PROBE = "the probe is any seeded random factor of about the weight's scale: the identity it checks holds for all"
PATH = ("which of add_map's two paths runs changes only the speed: both form the same sum (the test checks every "
        "path against each location's outer product), and every channel of a map has the same size")
NAME = "a version, or a batch number, only has to differ from the others: any start and any step keep them distinct"
EQUIVALENT: list[tuple[str, str, str, str]] = [
    ("stats", "SecondMoment.add_map", "hw = keys[0, 0].numel() if (keys.dim() > 2) and False else 0", PATH),
    ("stats", "SecondMoment.add_map", "hw = keys[0, 0].numel() if (keys.dim() > 2) or True else 0", PATH),
    ("stats", "SecondMoment.add_map", "hw = keys[0, 1].numel() if keys.dim() > 2 else 0", PATH),
    ("stats", "SecondMoment.add_map", "hw = keys[0, 0].numel() if keys.dim() >= 2 else 0", PATH),
    ("stats", "SecondMoment.add_map", "hw = keys[0, 0].numel() if keys.dim() > 3 else 0", PATH),
    ("stats", "SecondMoment.add_map", "hw = keys[0, 0].numel() if keys.dim() > 2 else 1", PATH),
    ("stats", "SecondMoment.add_map", "if self._split or hw <= keys.shape[1]:", PATH),
    ("stats", "SecondMoment.add_map", "self._acc += torch.bmm(k, k.transpose(1, 2)).sum(0).to(None)", SUM64),
    ("stack", "EditStack.__init__", "self._next_batch = 2", NAME),
    ("stack", "EditStack.__init__", "self.version = None  # names the live weights (a cache key for what they compute): new for every change,", NAME),
    ("stack", "EditStack.__init__", "self._versions = 1  # the old one again when `trial` puts the weights back bit for bit", NAME),
    ("stack", "EditStack._sync", "self._versions -= 1", NAME),
    ("stack", "EditStack._sync", "self._versions += 2", NAME),
    ("stack", "EditStack.push_many", "self._next_batch += 2", NAME),
    ("directions", "key_directions", "w = weights.to(None, torch.float64)", CPU),
    ("directions", "key_directions", "w = weights.to(torch.float64)", CPU),
    ("directions", "key_directions", "z = zca_whitener(cov.to(None), eig_floor)", CPU),
    ("directions", "key_directions", "w = weights.to(keys.device, None)",
     PROMOTES + "; only w.sum() is rounded in float32, and it only scales the key that signs the directions"),
    ("directions", "key_directions", "w = weights.to(keys.device, )",
     PROMOTES + "; only w.sum() is rounded in float32, and it only scales the key that signs the directions"),
    ("directions", "key_directions", "mean_key = (keys.to(None) * w[:, None]).sum(0) / w.sum()", PROMOTES),
    ("directions", "key_directions", "rank = min(rank, int((w > 0).sum()), )",
     "the SVD (full_matrices=False) returns at most C_in rows, so the cap by C_in is already there"),
    ("directions", "key_directions", "_, _, vh = torch.linalg.svd(white, )",
     "full matrices only add rows past the rank, which are never used"),
    ("directions", "key_directions", "_, _, vh = torch.linalg.svd(white, full_matrices=True)",
     "full matrices only add rows past the rank, which are never used"),
    ("directions", "key_directions", "mean_key = (keys.to(torch.float64) * w[:, None]).sum(0) * w.sum()",
     "a positive rescaling of the mean key, of which only the sign of a dot product is used"),
    ("directions", "key_directions", "return (dirs / signs[:, None]).to(keys.dtype)",
     "the signs are +1 or -1 (zeros are set to 1), so dividing equals multiplying"),
    ("update", "closed_form_insert", "residual = values.to(None).T - weight.to(torch.float64) @ k  # (C_out, r)", PROMOTES),
    ("update", "optimize_factor", 'best, best_loss, losses = factor0.detach().clone(), float("INF"), []',
     'float("INF") is float("inf")'),
    ("update", "optimize_factor", "for step in range(steps + 2):", "the loop ends at step == steps by its break"),
    ("update", "linear_design", "taps = int(torch.tensor(tap_shape).prod()) if (tap_shape) or True else 1",
     "the product of an empty shape is 1"),
    ("update", "linear_design", "basis = torch.zeros((c_out, r, taps), dtype=dirs.dtype, device=None)", CPU),
    ("update", "linear_design", "basis = torch.zeros((c_out, r, taps), dtype=dirs.dtype, )", CPU),
    ("update", "lstsq_factor", "x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=None), "
     "a.T @ residual.detach().to(torch.float64))", CPU),
    ("update", "lstsq_factor", "x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, ), "
     "a.T @ residual.detach().to(torch.float64))", CPU),
    ("update", "lstsq_factor", "x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=None, device=gram.device), "
     "a.T @ residual.detach().to(torch.float64))", "a float32 identity added to a float64 Gram matrix promotes exactly"),
    ("update", "lstsq_factor", "x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], device=gram.device), "
     "a.T @ residual.detach().to(torch.float64))", "a float32 identity added to a float64 Gram matrix promotes exactly"),
    ("update", "lstsq_factor", "x = torch.linalg.solve(gram + lam * torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device), "
     "a.T @ residual.detach().to(torch.float64))", "the Gram matrix is square"),
    ("stats", "collect_key_stats", "device = None", CPU),
    ("stats", "collect_key_stats",
     "rows = rows_from_map(run_until(model, spec.weight_module, z.to(device), record_output=None).input)",
     "None is false like False: the trace still stops before the layer"),
    ("stats", "collect_key_stats",
     "rows = rows_from_map(run_until(model, spec.weight_module, z.to(None), record_output=False).input)", CPU),
    ("stats", "collect_key_stats", "acc = SecondMoment(rows.shape[1], None, getattr(torch, config.product_dtype))", CPU),
    ("stats", "SecondMoment.__init__", "self._acc = torch.zeros(dim, dim, dtype=torch.float64, device=None)", CPU),
    ("stats", "SecondMoment.__init__", "self._acc = torch.zeros(dim, dim, dtype=torch.float64, )", CPU),
    ("stats", "SecondMoment.add", "h = None",
     "the full product instead of the two blocks: the same sum (its lower block is mirrored from the upper one), only slower"),
    ("stats", "SecondMoment.add", "self._acc[:h] += (k[:, :h].T @ k).to(None)", SUM64),
    ("stats", "SecondMoment.add", "self._acc[h:, h:] += (k[:, h:].T @ k[:, h:]).to(None)", SUM64),
    ("stats", "SecondMoment.add", "self._acc += (k.T @ k).to(None)", SUM64),
    ("solve", "_factored_block_output", 'projected = torch.einsum("RC,BC...->BR...", dirs, obs.keys)  # (B, r, *key grid)',
     "einsum subscripts are labels: upper-case letters name the same contraction"),
    ("solve", "_factored_block_output",
     "probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype).to(w0.device) / w0.std()", PROBE),
    ("solve", "_factored_block_output",
     "probe = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=w0.dtype).to(w0.device) * w0.std()", PROBE),
    ("solve", "_factored_block_output",
     "probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=w0.dtype).to(None) * w0.std()", CPU),
    ("solve", "_factored_block_output",
     "probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=None).to(w0.device) * w0.std()",
     PROBE + "; a float32 probe scaled by the weight's std takes the weight's dtype"),
    ("solve", "_factored_block_output",
     "probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), ).to(w0.device) * w0.std()",
     PROBE + "; a float32 probe scaled by the weight's std takes the weight's dtype"),
    ("solve", "_factored_block_output", "if want.shape == got.shape and float((want - got).abs().max()) < "
     "1e-4 * float(want.abs().max()) + 1e-6:", "a difference exactly at the tolerance has probability zero"),
    ("solve", "solve_update", "rows = inside.reshape(-1).to(None)", CPU),
    ("solve", "solve_update", "cancelled.append(None)", "a list holding None is true like one holding the step"),
    ("solve", "_goal_loss", "if preserve >= 0 and n_in < n_all:", "with preserve 0 the added outside term is 0 x a finite mean"),
    ("solve", "_goal_loss", "loss = loss + preserve * outside / (keep.numel() / n_all * (n_all - n_in))",
     "keep.numel() is a multiple of n_all: true and floor division agree"),
    ("report", "measure_edit",
     "layer = entry.spec.layer if (entry.spec is not None) and False else _layer_of(rw, entry.delta.param_path)",
     "the layer an edit's spec names owns the edit's weight (Rewriter.apply checks it), so looking it up gives the same"),
    ("masks", "data_url_from_mask",
     'return "data:image/png;base64," + base64.b64encode(png_bytes_from_mask(mask)).decode("ASCII")',
     "codec names are case-insensitive"),
    ("hooks", "call_with_weight", "return functional_call(module, {param_path: weight}, args, kwargs, strict=None)",
     "functional_call's strict is False by default, and None is false"),
    ("hooks", "call_with_weight", "return functional_call(module, {param_path: weight}, args, kwargs, )",
     "functional_call's strict is False by default"),
    ("goals", "context_keys", "mask = mask.to(None)", CPU),
    ("goals", "erase_units", "under = (keys.to(torch.float64) ** 2 * weights[:, None]).sum(0) * weights.sum()",
     "a positive rescaling of every channel's score: the ranking is the same"),
    ("goals", "erase_units", "under = (keys.to(None) ** 2 * weights[:, None]).sum(0) / weights.sum()",
     "the squares are rounded to float32 before the float64 sum: the ranking changes only for channels tied within "
     "float32 rounding"),
    ("goals", "erase_units", "score = under / cov.diagonal().to(None, torch.float64).clamp_min(1e-12)", CPU),
    ("goals", "erase_units", "score = under / cov.diagonal().to(torch.float64).clamp_min(1e-12)", CPU),
    ("goals", "erase_units", "score = under / cov.diagonal().to(under.device, None).clamp_min(1e-12)",
     "the statistics are float64 already (KeyStats.moment), and a float32 diagonal would promote exactly"),
    ("goals", "erase_units", "score = under / cov.diagonal().to(under.device, ).clamp_min(1e-12)",
     "the statistics are float64 already (KeyStats.moment), and a float32 diagonal would promote exactly"),
    ("quality", "fidelity", "return 1.0 - got / want if want >= 1e-8 else (1.0 if got <= 1e-8 else 0.0)", F32),
    ("quality", "fidelity", "return 1.0 - got / want if want > 1e-8 else (1.0 if got < 1e-8 else 0.0)", F32),
    ("quality", "quality_report", "change = (m.after - m.before).abs().flatten(2).mean(1)  # (N,)",
     "collateral is the mean over the chosen images' pixels; averaging the colour axis first gives the same mean"),
    ("quality", "quality_report", '"collateral": verdict(collateral, COLLATERAL_VERDICTS, higher_is_better=None)}',
     "None is false like False"),
    ("stack", "EditStack._sync", "weight += entry.delta.dense().to(None, weight.dtype)", CPU),
    ("stack", "EditStack._sync", "weight += entry.delta.dense().to(weight.dtype)", CPU),
]

# Tests that start OpenMP threads (torch.set_num_threads(2)) in mutmut's process, after which the forks mutmut runs
# each mutant in hang (its fork server avoids that, but runs ten times slower here). What they test is
# solve.single_thread, a decorated function, which mutmut does not mutate.
DESELECT = ["--deselect", "tests/test_solve.py::test_the_thread_count_comes_back_after_a_solve",
            "--deselect", "tests/test_solve.py::test_single_thread_restores_the_count_even_when_the_block_raises"]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check", None: "not checked"}


def _pyproject(module: str, tests: list[str]) -> str:
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return f"""[tool.mutmut]
source_paths = ["src/model_rewrite"]
only_mutate = ["src/model_rewrite/{module}.py"]
pytest_add_cli_args = {q(["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *DESELECT])}
pytest_add_cli_args_test_selection = {q(tests)}
use_git_change_detection = false
track_dependencies = false
timeout_multiplier = 60.0

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["e2e: end-to-end tests in a real browser", "slow: end-to-end tests on the real default model"]
"""


def _prepare(module: str, tests: list[str]) -> Path:
    work = WORK / module
    if work.exists():
        shutil.rmtree(work)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "src" / "model_rewrite", work / "src" / "model_rewrite", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text(_pyproject(module, tests))
    return work


_SHOW = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names = json.loads(sys.argv[1])
print(json.dumps({n: get_diff_for_mutant(n, path=sys.argv[2]) for n in names}))
"""


def _diffs(work: Path, module: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    out = subprocess.run([sys.executable, "-c", _SHOW, json.dumps(names), f"src/model_rewrite/{module}.py"], cwd=work,
                         capture_output=True, text=True, env=_env(), check=True).stdout
    return json.loads(out)


def _changed_line(diff: str) -> str:
    """The mutated line(s) of a mutmut diff: its '+' lines, stripped, joined by ' / '."""
    lines = [l[1:].strip() for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return " / ".join(lines)


def _function(name: str) -> str:
    """model_rewrite.directions.x_zca_whitener__mutmut_3 -> zca_whitener; xǁClassǁmethod__mutmut_2 -> Class.method."""
    tail = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    return tail.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts the mutated copy first itself
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_module(module: str, children: int, timeout_s: float, resume: bool = False) -> dict:
    tests = [t for t in TESTS[module] if (ROOT / t).exists()]
    work = WORK / module
    meta = work / "mutants" / "src" / "model_rewrite" / f"{module}.py.meta"
    if resume and meta.exists():  # mutmut keeps the results it has and tests the rest
        tests = [t for t in TESTS[module] if (work / t).exists()]
    else:
        work = _prepare(module, tests)
    mutmut = Path(sys.executable).with_name("mutmut")
    t0 = time.perf_counter()
    log = (work / "mutmut.log").open("w")
    try:
        proc = subprocess.run(["nice", "-n", "10", str(mutmut), "run", "--max-children", str(children)], cwd=work,
                              env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return collect(work, module, tests, time.perf_counter() - t0, rc)


def collect(work: Path, module: str, tests: list[str], seconds: float, rc: object = 0) -> dict:
    """A module's result from mutmut's records in its scratch copy `work`.

    Only mutants whose tests failed count as killed. A mutant whose tests were still running after 60 times their
    measured time ("timeout") is not counted as killed: on this busy machine that is what an unkillable mutant
    running the module's whole test subset looks like. Like a survivor, it is either listed in EQUIVALENT or shown.
    """
    meta_path = work / "mutants" / "src" / "model_rewrite" / f"{module}.py.meta"
    if not meta_path.exists():
        raise SystemExit(f"{module}: mutmut wrote no results (exit {rc}); see {work / 'mutmut.log'}")
    codes = json.loads(meta_path.read_text())["exit_code_by_key"]
    status = {name: STATUS.get(code, "suspicious") for name, code in codes.items()}
    not_killed = sorted((n for n, s in status.items() if s != "killed"), key=_sort_key)
    diffs = _diffs(work, module, not_killed)
    items = [{"mutant": n.rpartition(".")[2], "function": _function(n), "status": status[n],
              "line": _changed_line(diffs[n]), "diff": _short_diff(diffs[n])} for n in not_killed]
    res = {"module": module, "tests": tests, "mutants": len(status),
           "killed": sum(s == "killed" for s in status.values()),
           "timeouts": sum(s == "timeout" for s in status.values()), "seconds": round(seconds, 1), "mutmut_exit": rc,
           "survivors": items, "equivalents": []}
    return reclassify(res)


def _sort_key(name: str) -> tuple[str, int]:
    head, _, n = name.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else 0


def _short_diff(diff: str) -> str:
    """Only the changed lines of a diff, with one line of context."""
    lines = diff.splitlines()[2:]  # drop the ---/+++ header
    keep = {i + d for i, l in enumerate(lines) if l[:1] in "+-" for d in (-1, 0, 1)}
    return "\n".join(lines[i] for i in sorted(keep) if 0 <= i < len(lines))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_report(data: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    md = ["# Mutation testing of the core", "",
          "Made by `scripts/mutation.py` (mutmut, one module at a time against its focused tests; see the script's",
          "docstring). Score = killed / (mutants - equivalent). A mutant whose tests still ran after 60 times their",
          "measured time (mutmut's timeout) is not counted as killed: on a busy machine that is how an unkillable mutant",
          "that runs its whole test subset ends; such mutants are equivalent or survivors like the others. Target: "
          f"{TARGET:.0%} per module.", ""]
    for label, run in data.get("runs", {}).items():
        md += [f"## {label}", "", run.get("note", ""), "",
               "| module | mutants | killed | equivalent (timed out) | survived (timed out) | score | seconds | tests |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        mods = run["modules"]
        for m in mods.values():
            te = sum(e.get("status") == "timeout" for e in m["equivalents"])
            ts = sum(e.get("status") == "timeout" for e in m["survivors"])
            md.append(f"| {m['module']} | {m['mutants']} | {m['killed']} | {m['equivalent']} ({te}) | {m['survived']} ({ts}) | "
                      f"{m['score']:.1%} | {m['seconds']:.0f} | {', '.join(Path(t).name for t in m['tests'])} |")
        tot = {k: sum(m[k] for m in mods.values()) for k in ("mutants", "killed", "equivalent", "survived")}
        secs = sum(m["seconds"] for m in mods.values())
        scored = tot["mutants"] - tot["equivalent"]
        te = sum(e.get("status") == "timeout" for m in mods.values() for e in m["equivalents"])
        ts = sum(e.get("status") == "timeout" for m in mods.values() for e in m["survivors"])
        md += [f"| **all** | {tot['mutants']} | {tot['killed']} | {tot['equivalent']} ({te}) | {tot['survived']} ({ts}) | "
               f"{tot['killed'] / max(scored, 1):.1%} | {secs:.0f} | |", ""]
        surv = [(m["module"], s) for m in mods.values() for s in m["survivors"]]
        if surv:
            md += [f"### Surviving mutants ({label})", "", "| module | mutant | mutated line |", "| --- | --- | --- |"]
            md += [f"| {mod} | `{s['mutant']}`{'' if s.get('status') == 'survived' else ' (' + s.get('status', '') + ')'} | "
                   f"`{_cell(s['line'])}` |" for mod, s in surv]
            md.append("")
        eq = [(m["module"], s) for m in mods.values() for s in m["equivalents"]]
        if eq:
            md += [f"### Equivalent mutants ({label})", "", "| module | function | mutated line | why no test can kill it |",
                   "| --- | --- | --- | --- |"]
            md += [f"| {mod} | {s['function']} | `{_cell(s['line'])}` | {s['reason']} |" for mod, s in eq]
            md.append("")
    RESULTS.with_suffix(".md").write_text("\n".join(md))


def reclassify(res: dict) -> dict:
    """A module's result with its not-killed mutants sorted again into survivors and equivalents by EQUIVALENT
    (so a reason added after a run applies without running mutmut again)."""
    items = res["survivors"] + res["equivalents"]
    res["survivors"], res["equivalents"] = [], []
    for item in sorted(items, key=lambda i: _sort_key(i["mutant"])):
        reason = next((r for m, f, l, r in EQUIVALENT if m == res["module"] and f == item["function"] and l == item["line"]),
                      None)
        item = {k: v for k, v in item.items() if k != "reason"}
        if reason is None:
            res["survivors"].append(item)
        else:
            res["equivalents"].append({**{k: v for k, v in item.items() if k != "diff"}, "reason": reason})
    res["equivalent"], res["survived"] = len(res["equivalents"]), len(res["survivors"])
    scored = res["mutants"] - res["equivalent"]
    res["score"] = round(res["killed"] / scored, 4) if scored else 1.0
    return res


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help=f"modules to run (default all: {', '.join(TESTS)})")
    p.add_argument("--label", default="after", help="where the results go in mutation.json (default 'after')")
    p.add_argument("--note", default=None, help="a line about this run for mutation.md")
    p.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one module may take (default 1800)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--collect", metavar="WORK", default=None,
                   help="no mutmut run: read the results of the modules from the scratch copies under WORK "
                        "(default build/mutation), keeping the run times recorded before")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run in the modules' scratch copies instead of starting afresh")
    p.add_argument("--report", action="store_true",
                   help="only sort the stored survivors again by EQUIVALENT and rewrite mutation.json and mutation.md")
    args = p.parse_args(argv)
    RESULTS = args.results
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    if args.report:
        for run in data["runs"].values():
            run["modules"] = {m: reclassify(r) for m, r in run["modules"].items()}
        write_report(data)
        return 0
    unknown = sorted(set(args.modules) - set(TESTS))
    if unknown:
        p.error(f"unknown module(s) {unknown}; choose from {list(TESTS)}")
    run = data["runs"].setdefault(args.label, {"note": "", "modules": {}})
    if args.note is not None:
        run["note"] = args.note
    failed = []
    for module in args.modules or list(TESTS):
        if args.collect is not None:
            old = run["modules"].get(module, {})
            work = Path(args.collect or WORK) / module
            tests = [t for t in TESTS[module] if (work / t).exists()]
            res = collect(work, module, tests, old.get("seconds", 0.0), old.get("mutmut_exit", 0))
        else:
            res = run_module(module, args.children, args.timeout, args.resume)
        run["modules"][module] = res
        run["modules"] = {m: run["modules"][m] for m in TESTS if m in run["modules"]}
        write_report(data)
        print(f"{module:<11} {res['killed']:>4}/{res['mutants'] - res['equivalent']:<4} killed ({res['score']:.1%}), "
              f"{res['equivalent']} equivalent, {res['survived']} survived, {res['seconds']:.0f}s", flush=True)
        if res["score"] < TARGET or res["survived"]:
            failed.append(module)
    if failed:
        print(f"below target or with unexplained survivors: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
