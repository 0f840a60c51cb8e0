"""Replaying the paper's quantitative experiments (section 5.1) on a user's StyleGAN2: the four request files
the authors evaluated, each at the layer they used, with their latents, each measured by our report.

The authors' `experiments.sh` runs `metrics/sample_edited.py` for `smile`, `dome2spire`, `dome2tree` and
`dome2castle`, whose layers are listed in their `metrics/load_mask.py` (in their SeqStyleGAN2 numbering,
which our StyleGAN2 accepts as layer aliases). Their files are in their repository under `notebooks/masks/`
(`stylegan/church/dome2spire.json`, `dome2tree.json`, `dome2castle_layer6_with_context.json`,
`stylegan/celebhq/smile.json`); the replay reads them from a folder the user provides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from .cache import atomic_write_bytes
from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
from .edits import read_edit_json
from .errors import InvalidEdit
from .paper_format import edit_from_paper_request, is_paper_request
from .run_edits import apply_edits

# Our optimiser on the authors' schedule: rank 1 (KeyConfig()), 2000 Adam steps at lr 0.05 on the tight paste box,
# no term keeping the rest of the paste image (METHOD.md section 6); statistics over 1000 samples (StatsConfig()).
# An emulation, not their algorithm: `--method reference` (reference.py) runs that.
PAPER_SCHEDULE = UpdateConfig(steps=2000, lr=0.05, preserve=0.0, tight_paste=True)


@dataclass(frozen=True)
class PaperExperiment:
    """One edit of the paper's section 5.1: its name, the authors' layer name, the model they ran it on and
    the names its request file may have in the user's folder (the authors' name first)."""

    name: str
    layer: str
    dataset: str
    files: tuple[str, ...]


PAPER_EXPERIMENTS: tuple[PaperExperiment, ...] = (
    PaperExperiment("dome2spire", "layer8", "church", ("dome2spire.json", "stylegan__church__dome2spire.json")),
    PaperExperiment("dome2tree", "layer8", "church", ("dome2tree.json", "stylegan__church__dome2tree.json")),
    PaperExperiment("dome2castle", "layer6", "church", ("dome2castle_layer6_with_context.json",
                                                        "stylegan__church__dome2castle_layer6_with_context.json",
                                                        "dome2castle.json")),
    PaperExperiment("smile", "layer10", "faces", ("smile.json", "stylegan__celebhq__smile.json")),
)


def select_experiments(names: Sequence[str] | None) -> list[PaperExperiment]:
    """The experiments named (all four when `names` is empty or None), in the table's order."""
    known = {e.name: e for e in PAPER_EXPERIMENTS}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise InvalidEdit(f"unknown paper experiment(s) {unknown}; choose from {list(known)}")
    return [e for e in PAPER_EXPERIMENTS if not names or e.name in names]


def find_requests(folder: str | Path, experiments: Sequence[PaperExperiment]) -> dict[str, Path]:
    """The request file of each experiment in `folder`; InvalidEdit naming every missing one and where to get it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidEdit(f"--requests {folder} is not a folder; give the folder holding the authors' request files")
    found: dict[str, Path] = {}
    missing = []
    for exp in experiments:
        path = next((folder / f for f in exp.files if (folder / f).is_file()), None)
        if path is None:
            missing.append(exp.files[0])
        else:
            found[exp.name] = path
    if missing:
        raise InvalidEdit(f"{folder} lacks {', '.join(missing)}: copy them from the authors' repository davidbau/rewriting, "
                          "notebooks/masks/stylegan/church/ and notebooks/masks/stylegan/celebhq/ (or choose experiments "
                          "with --experiments)")
    return found


def replay_paper(rw: Any, requests: str | Path, out: str | Path, seeds: Sequence[int], *,
                 experiments: Sequence[str] | None = None, update: UpdateConfig = PAPER_SCHEDULE,
                 keys: KeyConfig = KeyConfig(), stats: StatsConfig = StatsConfig(), render: RenderConfig = RenderConfig(),
                 quiet: bool = False, scale: int = 2) -> dict:
    """Apply each chosen experiment's request (from the folder `requests`) on the unedited model `rw` at the
    paper's layer, measure it on the images `seeds`, and write `out/<name>/` (edit.json with its factors,
    grid.png, report.json: what `model-rewrite apply` writes, less the weights) and `out/summary.json`.

    `rw` should use the authors' latents (`Rewriter(..., latents="paper")`) so that the files' image numbers
    name their images. Each experiment starts from the unedited weights; the summary is returned.
    """
    chosen = select_experiments(experiments)
    files = find_requests(requests, chosen)
    out = Path(out)
    rows = []
    for exp in chosen:
        layer = rw.spec(exp.layer).name  # the authors' name -> ours (StyleGAN2 only)
        path = files[exp.name]
        data = read_edit_json(path)
        if not is_paper_request(data):
            raise InvalidEdit(f"{path} is not one of the authors' request files (key/object/paste/query)")
        try:
            spec = edit_from_paper_request(data, model=rw.info.model_id, fingerprint=rw.info.fingerprint, layer=layer,
                                           update=update, resolution=rw.info.resolution, latents=rw.latent_scheme,
                                           name=exp.name)
        except InvalidEdit as exc:
            raise InvalidEdit(f"{path}: {exc}") from None
        if spec.is_search_request:
            raise InvalidEdit(f"{path} has no paste selection, so it cannot be applied; is it the {exp.name} request?")
        spec = rw.check_edit(replace(spec, keys=keys, stats=stats))
        report = apply_edits(rw, [(path, spec, None)], seeds, out / exp.name, render=render, quiet=quiet, scale=scale,
                             save_weights=False)
        rw.stack.revert_all()  # the next experiment starts from the unedited model
        edit = report["edits"][0]
        rows.append({"experiment": exp.name, "request": str(path), "paper_layer": exp.layer, "layer": layer,
                     "paper_model": exp.dataset, **{k: edit[k] for k in ("inside_change", "outside_change", "ratio",
                                                                           "goal_loss", "solve_seconds")}})
    summary = {"model": rw.info.model_id, "fingerprint": rw.info.fingerprint, "latents": rw.latent_scheme,
               "heldout_seeds": list(seeds), "experiments": rows}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary
