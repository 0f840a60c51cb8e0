"""The world benchmark's analysis and outputs: does `suggest` pick the best configuration by exact labels, does
the quality report's transfer rank runs as exact success does, and the tables, plots and example images.

Suggest hit rule: the swept configurations are our default solve at every (layer, rank) of the sweep (what
`suggest` chooses among, then applies). The best one by exact labels has the highest success among those whose
label collateral is at most the bound (`--collateral-bound`, default 0.05; also reported with the median of
the configurations' collateral as the bound); when none is under the bound, the best is the highest success of
all. Suggest hits when its pick is acceptable and has that highest success (ties count as hits).

Correlations: Spearman (average ranks for ties) over every (method, edit, layer) run that has the figure:
transfer (copy-paste edits, every layer method; not the fine-tune of all weights, which is no stack edit, and
not the suggest run, which repeats one configuration) against exact success on the held-out seeds; paste
fidelity against success on the paste image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_rewrite.render import image_grid, save_png
from world import CLASSES, colour_labels
from world_metrics import fast_labels, mode_filter, spearman


WORKS = 0.01  # a best configuration below this success rewrites nothing: a hit or miss against it is vacuous


# --- analysis ---------------------------------------------------------------------------------------
def _configs(results: dict, edit: str) -> list[dict]:
    meta = results["meta"]
    names = set(meta["rank_methods"].values())
    return [r for r in results["runs"] if r["edit"] == edit and r["method"] in names and r["layer"] in meta["layers"]]


def suggest_hit(configs: list[dict], pick: dict, key: str, bound: float) -> dict:
    """Whether `pick` ({layer, rank}) is the best of `configs` by `key` under label collateral <= `bound`."""
    ok = [r for r in configs if r["label_collateral"] <= bound]
    pool = ok or configs
    best = max(pool, key=lambda r: r[key])
    chosen = next(r for r in configs if (r["layer"], r["rank"]) == (pick["layer"], pick["rank"]))
    in_pool = chosen in pool
    place = 1 + sum(r[key] > chosen[key] for r in pool) if in_pool else None
    return {"hit": bool(in_pool and chosen[key] >= best[key]), "vacuous": bool(best[key] < WORKS), "best": {"layer": best["layer"], "rank": best["rank"],
            key: best[key], "label_collateral": best["label_collateral"]},
            "pick": {"layer": chosen["layer"], "rank": chosen["rank"], key: chosen[key],
                     "label_collateral": chosen["label_collateral"]},
            "pick_place": place, "acceptable": len(ok), "bound": bound}


def pareto(configs: list[dict], pick: dict) -> dict:
    """Is `pick` on the front of (success up, label collateral down)? The configurations that beat it on both."""
    chosen = next(r for r in configs if (r["layer"], r["rank"]) == (pick["layer"], pick["rank"]))
    better = [r for r in configs if r is not chosen and r["success"] >= chosen["success"]
              and r["label_collateral"] <= chosen["label_collateral"]
              and (r["success"] > chosen["success"] or r["label_collateral"] < chosen["label_collateral"])]
    return {"on_front": not better, "dominated_by": [{"layer": r["layer"], "rank": r["rank"], "success": r["success"],
                                                       "label_collateral": r["label_collateral"]} for r in better]}


def _corr(runs: list[dict], x: str, y: str) -> dict:
    xs = [r["quality"][x] for r in runs]
    ys = [r[y] for r in runs]
    return {"spearman": spearman(np.array(xs), np.array(ys)), "n": len(runs)}


def analyse(results: dict) -> dict:
    """Suggest's hits and the correlations of the quality report with the exact figures (module docstring)."""
    bound = results["meta"]["collateral_bound"]
    out: dict = {"suggest": {}, "correlations": {}}
    for edit, info in results["edits"].items():
        configs = _configs(results, edit)
        pick = info["suggest"]["pick"]
        median = float(np.median([r["label_collateral"] for r in configs]))
        scores = {(c["layer"], c["rank"]): c["score"] for c in info["suggest"]["candidates"]}
        paired = [(scores.get((r["layer"], r["rank"])), r["success"]) for r in configs]
        paired = [(a, b) for a, b in paired if a is not None]
        out["suggest"][edit] = {
            f"{key}@{name}": suggest_hit(configs, pick, key, b)
            for key in ("success", "object_success") for name, b in (("bound", bound), ("median", median))}
        out["suggest"][edit]["pareto"] = pareto(configs, pick)
        run = next(r for r in results["runs"] if r["edit"] == edit and r["method"] == "suggest")
        same = next(r for r in configs if (r["layer"], r["rank"]) == (pick["layer"], pick["rank"]))
        out["suggest"][edit]["run_equals_its_configuration"] = run["success"] == same["success"] and \
            run["label_collateral"] == same["label_collateral"]
        out["suggest"][edit]["score_vs_success_spearman"] = {
            "spearman": spearman(np.array([a for a, _ in paired]), np.array([b for _, b in paired])), "n": len(paired)}
    for key in ("success@bound", "success@median", "object_success@bound", "object_success@median"):
        rows = [v[key] for v in out["suggest"].values()]
        real = [h for h in rows if not h["vacuous"]]
        out[f"suggest_hits_{key}"] = (f"{sum(h['hit'] for h in real)}/{len(real)}"
                                      + (f" (+{len(rows) - len(real)} where no configuration under the bound reaches "
                                         f"{WORKS} success: {sum(h['hit'] for h in rows if h['vacuous'])} of them hit)"
                                         if len(real) < len(rows) else ""))
    front = [v["pareto"]["on_front"] for v in out["suggest"].values()]
    out["suggest_on_pareto_front"] = f"{sum(front)}/{len(front)}"
    layer_runs = [r for r in results["runs"] if r["quality"] is not None and r["method"] != "suggest"]
    t = [r for r in layer_runs if r["quality"]["transfer"] is not None]
    p = [r for r in layer_runs if r["quality"]["paste_fidelity"] is not None]
    c = out["correlations"]
    c["transfer_vs_success"] = _corr(t, "transfer", "success")
    c["transfer_vs_object_success"] = _corr(t, "transfer", "object_success")
    c["transfer_vs_success_on_the_same_images"] = _corr(t, "transfer", "success_on_quality_seeds")
    for edit in sorted({r["edit"] for r in t}):
        c[f"transfer_vs_success[{edit}]"] = _corr([r for r in t if r["edit"] == edit], "transfer", "success")
    c["paste_fidelity_vs_success_on_paste_image"] = _corr(p, "paste_fidelity", "success_on_paste_image")
    c["paste_fidelity_vs_object_success_on_paste_image"] = _corr(p, "paste_fidelity", "object_success_on_paste_image")
    c["quality_collateral_vs_label_collateral"] = _corr(layer_runs, "collateral", "label_collateral")
    return out


# --- tables -----------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def run_table(runs: list[dict], show_layer: bool = False) -> str:
    head = ("| edit | " + ("layer | " if show_layer else "") + "method | success ↑ | object success ↑ (objects) | "
            "success on the paste image | label collateral ↓ | pixel collateral ↓ (0-255) | sibling spill ↓ | "
            "transfer | paste fidelity | time (s) |")
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for r in runs:
        q = r["quality"] or {}
        lines.append(f"| {r['edit']} | " + (f"{r['layer']} | " if show_layer else "") + f"{r['method']} | {_f(r['success'])} | "
                     f"{_f(r['object_success'])} ({r['objects']}) | {_f(r['success_on_paste_image'])} | "
                     f"{_f(r['label_collateral'], 4)} | {_f(r['pixel_collateral'], 2)} | {_f(r['sibling_spill'], 4)} | "
                     f"{_f(q.get('transfer'), 2)} | {_f(q.get('paste_fidelity'), 2)} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def suggest_table(results: dict, edit: str) -> str:
    info, a = results["edits"][edit]["suggest"], results["analysis"]["suggest"][edit]
    exact = {(r["layer"], r["rank"]): r for r in _configs(results, edit)}
    h = a["success@bound"]
    ok = [r for r in exact.values() if r["label_collateral"] <= h["bound"]] or list(exact.values())
    best = {(r["layer"], r["rank"]) for r in ok if r["success"] >= h["best"]["success"]}
    lines = ["| layer | rank | suggest score | its transfer | its paste fidelity | its locality | its collateral | "
             "exact success (default solve) | object success | label collateral | |", "| " + " | ".join(["---"] * 11) + " |"]
    for i, c in enumerate(info["candidates"]):
        r = exact.get((c["layer"], c["rank"]), {})
        mark = ("picked" if i == 0 else "") + (" / best" if (c["layer"], c["rank"]) in best else "")
        lines.append(f"| {c['layer']} | {c['rank']} | {_f(c['score'])} | {_f(c['transfer'])} | {_f(c['paste_fidelity'])} | "
                     f"{_f(c['locality'], 2)} | {_f(c['collateral'])} | {_f(r.get('success'))} | {_f(r.get('object_success'))} | "
                     f"{_f(r.get('label_collateral'), 4)} | {mark.strip(' /')} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    meta, a = results["meta"], results["analysis"]
    parts = [f"Model `{meta['model']}` (fingerprint {meta['fingerprint']}), layers {', '.join(meta['layers'])}, ranks "
             f"{meta['ranks']}, {meta['n_eval']} held-out seeds (from {meta['eval_seeds'][0]}), quality report on seeds "
             f"{meta['quality_seeds']}, suggest scored on seeds {meta['suggest_seeds']}, {meta['n_context']} context examples, "
             f"collateral outside the context dilated by {meta['dilate_px']} px, objects: {meta['object_rule']}; "
             f"steps scale {meta['steps_scale']} (reference {meta['reference_steps']} steps); commit {meta['commit']}, "
             f"torch {meta['torch']}, {meta['threads']} CPU thread(s), {meta['total_seconds']:.0f} s in all.\n"]
    for layer in meta["layers"]:
        parts.append(f"## Layer {layer}\n\n" + run_table([r for r in results["runs"] if r["layer"] == layer and r["method"] != "suggest"]))
    parts.append("## Without a layer (unedited, fine-tune all weights) and suggest (at the layer it picked)\n\n"
                 + run_table([r for r in results["runs"] if r["layer"] == "-" or r["method"] == "suggest"], show_layer=True))
    lines = ["## suggest against the exact labels\n",
             f"Hits (pick = best swept configuration): by success with label collateral <= {meta['collateral_bound']}: "
             f"{a['suggest_hits_success@bound']}; with the median collateral as the bound: {a['suggest_hits_success@median']}; "
             f"by object success: {a['suggest_hits_object_success@bound']} / {a['suggest_hits_object_success@median']}; "
             f"the pick is on the (success, label collateral) Pareto front of the configurations: {a['suggest_on_pareto_front']}.\n"]
    for edit in results["edits"]:
        s = a["suggest"][edit]
        h, m = s["success@bound"], s["success@median"]
        dom = ", ".join(f"{d['layer']} r{d['rank']}" for d in s["pareto"]["dominated_by"]) or "none"
        lines.append(f"### {edit}\n\nPicked {h['pick']['layer']} r{h['pick']['rank']} (success {_f(h['pick']['success'])}, "
                     f"label collateral {_f(h['pick']['label_collateral'], 4)}). Under label collateral <= {h['bound']}: place "
                     f"{h['pick_place'] or '- (over the bound)'} of {h['acceptable'] or 'all (none under the bound)'} acceptable, best "
                     f"{h['best']['layer']} r{h['best']['rank']} (success {_f(h['best']['success'])}); under the median "
                     f"({_f(m['bound'], 4)}): place {m['pick_place'] or '- (over the bound)'} of {m['acceptable']}, best {m['best']['layer']} "
                     f"r{m['best']['rank']} (success {_f(m['best']['success'])}); configurations better on both success and "
                     f"collateral: {dom}; suggest score "
                     f"vs exact success over the configurations: Spearman {_f(s['score_vs_success_spearman']['spearman'], 2)} "
                     f"(n = {s['score_vs_success_spearman']['n']}).\n\n" + suggest_table(results, edit) + "\n")
    parts.append("\n".join(lines))
    corr = ["## The quality report against the exact labels (Spearman, average ranks)\n", "| figures | Spearman | n |",
            "| --- | --- | --- |"]
    corr += [f"| {k} | {_f(v['spearman'], 3)} | {v['n']} |" for k, v in a["correlations"].items()]
    parts.append("\n".join(corr))
    rules = results["rules"]
    rule_lines = ["| rule | world scenes | generator samples |", "| --- | --- | --- |"]
    rule_lines += [f"| {k} | {v:.3f} | {rules['generator_samples'][k]:.3f} |" for k, v in rules["training_world"].items()]
    rule_lines += [f"| fraction of {c} pixels | {x:.4f} | {y:.4f} |" for c, (x, y) in rules["class_fractions"].items()]
    parts.append(f"## Rule obedience\n\n{meta['n_eval']} held-out world scenes vs {meta['n_eval']} generator samples "
                 f"(labeller pixel accuracy on the scenes: {rules['labeller_accuracy_on_held_out_scenes']:.4f}):\n\n"
                 + "\n".join(rule_lines))
    return "\n\n".join(parts) + "\n"


# --- images -----------------------------------------------------------------------------------------
def outline(colour: np.ndarray, obj_ids: np.ndarray) -> np.ndarray:
    """Colour label maps (N, H, W, 3) with every pixel outside an object washed towards white."""
    out = colour.astype(np.float32)
    off = obj_ids == 0
    out[off] = 0.3 * out[off] + 0.7 * 255
    return out.round().astype(np.uint8)


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, runs = results["meta"], results["runs"]
    edits = list(results["edits"])
    names = list(dict.fromkeys(r["method"] for r in runs))
    lmark = {layer: m for layer, m in zip(meta["layers"], "o^sDv")} | {"-": "*"}
    fig, axes = plt.subplots(1, len(edits), figsize=(4.6 * len(edits) + 3.0, 4.2))
    axes = np.atleast_1d(axes)
    for ax, edit in zip(axes, edits):
        for r in (r for r in runs if r["edit"] == edit):
            i = names.index(r["method"])
            ax.scatter(r["label_collateral"], r["success"], s=60 if r["method"] == "suggest" else 40,
                       marker=lmark[r["layer"]] if r["method"] != "suggest" else "X", color=f"C{i % 10}", alpha=0.85,
                       edgecolors="k" if r["method"] == "suggest" else "none")
        ax.set_title(edit)
        ax.set_xlabel("label collateral (other pixels relabelled)")
        ax.set_ylabel("success (context pixels -> target label)")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(-1e-4, 1.0)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker="o", color=f"C{i % 10}", label=n) for i, n in enumerate(names)]
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=f"layer {layer}" if layer != "-" else "no layer")
                for layer, m in lmark.items()]
    handles.append(plt.Line2D([], [], ls="", marker="X", color="grey", markeredgecolor="k", label="suggest (its layer)"))
    axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "success_vs_collateral.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    pts = [r for r in runs if r["quality"] and r["quality"]["transfer"] is not None and r["method"] != "suggest"]
    for r in pts:
        c = f"C{edits.index(r['edit'])}"
        axes[0].scatter(r["quality"]["transfer"], r["success"], color=c, marker=lmark[r["layer"]], alpha=0.8)
        axes[1].scatter(r["quality"]["paste_fidelity"], r["success_on_paste_image"], color=c, marker=lmark[r["layer"]], alpha=0.8)
    corr = results["analysis"]["correlations"]
    axes[0].set(xlabel="quality report: transfer", ylabel="exact success (held-out)",
                title=f"Spearman {_f(corr['transfer_vs_success']['spearman'], 2)} (n = {corr['transfer_vs_success']['n']})")
    pf = corr["paste_fidelity_vs_success_on_paste_image"]
    axes[1].set(xlabel="quality report: paste fidelity", ylabel="exact success on the paste image",
                title=f"Spearman {_f(pf['spearman'], 2)} (n = {pf['n']})")
    handles = [plt.Line2D([], [], ls="", marker="o", color=f"C{i}", label=e) for i, e in enumerate(edits)
               if any(r["edit"] == e for r in pts)]  # erase edits have no transfer
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=f"layer {layer}") for layer, m in lmark.items() if layer != "-"]
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_exact.png", dpi=110)
    plt.close(fig)


def _labelled_grid(rows: dict[str, np.ndarray], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    grid = image_grid([rows[n] for n in names], pad=2, scale=2)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 90 + 2.2, grid.shape[0] / 90 + 0.4))
    ax.imshow(grid, interpolation="none")
    row_h = grid.shape[0] / len(names)
    ax.set_yticks([row_h * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(results: dict, examples: dict[tuple[str, str], dict[str, np.ndarray]],
                  object_rows: dict[str, list[np.ndarray]], out: Path, samples: list[np.ndarray] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    _plot(results, out)
    if samples is not None:  # world scenes, their labels, generator samples, the labeller's reading of them
        save_png(image_grid(samples, pad=2, scale=3), out / "samples_and_labels.png")
    for (edit, layer), shown in examples.items():
        _labelled_grid(shown, f"{edit} at {layer}: unedited (top) and each method (held-out seeds)",
                       out / f"examples_{edit}_{layer}.png")
    names = dict(results["meta"]["rank_methods"])
    for edit, rows in object_rows.items():
        shown = dict(zip(["unedited", "its labels, mode filtered", "objects (rest washed out)"], rows))
        a = results["analysis"]["suggest"][edit]
        for who, c in (("suggest", a["success@bound"]["pick"]), ("best <= bound", a["success@bound"]["best"]),
                       ("best <= median", a["success@median"]["best"])):
            images = examples[(edit, c["layer"])][names[str(c["rank"])]]
            shown[f"{who}: {c['layer']} r{c['rank']}"] = images
            shown[f"{who}: labels, filtered"] = colour_labels(mode_filter(fast_labels(images), len(CLASSES)))
        _labelled_grid(shown, f"{edit}: the object rule on held-out examples (default solve at each configuration)",
                       out / f"objects_{edit}.png")


if __name__ == "__main__":  # re-render results.md and the plots of a finished run from its results.json
    import sys

    folder = Path(sys.argv[1])
    res = json.loads((folder / "results.json").read_text())
    res["analysis"] = analyse(res)
    (folder / "results.json").write_text(json.dumps(res, indent=1))
    (folder / "results.md").write_text(markdown(res))
    _plot(res, folder)
