"""End to end on the real default model (the pretrained 64x64 face DCGAN), through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FACE_MODEL_REASON, has_face_model

from model_rewrite import Rewriter, load_edit
from model_rewrite.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_add_glasses_changes_where_the_context_fires_and_little_elsewhere(tmp_path):
    out = tmp_path / "out"
    rc = main(["apply", str(EXAMPLES / "add-glasses" / "edit.json"), "--out", str(out), "--samples", "16", "--quiet",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heldout_seeds"] == list(range(1000, 1016))
    # the written edit replays to the same images as the exported weights, and undo restores the original
    rw = Rewriter("faces", cache_dir=tmp_path / "cache")
    seeds = list(range(1000, 1016))
    original = rw.sample(seeds)
    spec, delta = load_edit(out / "edit.json")
    rw.apply(spec, delta)
    exported = Rewriter(str(out / "model.safetensors"))
    edited = rw.sample(seeds)
    assert torch.equal(edited, exported.sample(seeds))
    # the report's figures recomputed here from the images and the edit's direction, with NumPy: the heat of the
    # first direction on the key grid, its 0.98 quantile over all images, nearest-neighbour cells on the pixels
    keys = []
    hook = rw.model.get_submodule(rw.spec(spec.layer).weight_module).register_forward_pre_hook(
        lambda _m, args: keys.append(args[0].detach().double().numpy()))
    try:
        rw.sample(seeds)
    finally:
        hook.remove()
    heat = np.einsum("nchw,c->nhw", np.concatenate(keys), delta.dirs[0].double().numpy())
    threshold = np.quantile(heat, 0.98)
    cell = 64 // heat.shape[1]
    fires = (heat > threshold).repeat(cell, 1).repeat(cell, 2)
    change = (edited - original).abs().mean(1).double().numpy()
    assert report["inside_change"] == pytest.approx(change[fires].mean(), rel=1e-3)
    assert report["outside_change"] == pytest.approx(change[~fires].mean(), rel=1e-3)
    # what the edit is for: it changes the images where its context fires, and little elsewhere; the bound is
    # the quality report's documented verdict "changes stay where the rule fires" (quality.LOCALITY_VERDICTS)
    assert change[fires].mean() > 3.0 * change[~fires].mean(), report
    rw.stack.undo()
    assert torch.equal(rw.sample(seeds), original)


def test_a_context_painted_against_the_top_edge_is_warned_about_and_one_away_from_edges_is_not(tmp_path):
    # green-hair's context (hair on top of the head) touches the image's top edge; its rule fires along the top
    # of every image (examples/green-hair/README.md). dark-glasses' context lies inside the face.
    from model_rewrite.quality import quality_report

    rw = Rewriter("faces", cache_dir=tmp_path / "cache")
    seeds = list(range(1000, 1032))
    found = {}
    for name in ("green-hair", "dark-glasses"):
        spec, delta = load_edit(EXAMPLES / name / "result" / "edit.json")
        assert delta is not None, "the example's solved factors lie beside its edit"
        entry = rw.apply(spec, delta)
        found[name] = quality_report(rw, entry.id, seeds)
        rw.stack.revert_all()
    hair, glasses = found["green-hair"], found["dark-glasses"]
    assert hair.edge_side == "top" and hair.edge_share > 0.4
    assert hair.lines()[-1].startswith("edge: ") and "top edge" in hair.lines()[-1]
    assert glasses.edge_share < 0.1 and len(glasses.lines()) == 6


def test_search_warns_when_the_context_direction_fires_along_an_edge(tmp_path, capsys):
    found = {}
    for name in ("green-hair", "dark-glasses"):
        out = tmp_path / name
        rc = main(["search", str(EXAMPLES / name / "edit.json"), "--out", str(out), "--seeds", "1000-1031", "--top", "4",
                   "--cache-dir", str(tmp_path / "cache")])
        assert rc == 0
        found[name] = (json.loads((out / "matches.json").read_text()), capsys.readouterr().out)
    (hair, hair_out), (glasses, glasses_out) = found["green-hair"], found["dark-glasses"]
    assert hair["edge_side"] == "top" and hair["edge_share"] > 0.4
    assert "lies along the images' top edge" in hair_out and "context's direction fires on these 32 images" in hair_out
    assert glasses["edge_share"] < 0.1 and "edge:" not in glasses_out


def test_the_web_search_warns_when_the_context_direction_fires_along_an_edge(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from model_rewrite.server.app import create_app
    from model_rewrite.server.session import EditSession

    session = EditSession(Rewriter("faces", cache_dir=tmp_path / "cache"), edits_dir=tmp_path / "edits")
    found = {}
    with TestClient(create_app(session), base_url="http://127.0.0.1", headers={"Content-Type": "application/json"}) as c:
        for name in ("green-hair", "dark-glasses"):
            edit = json.loads((EXAMPLES / name / "edit.json").read_text())
            r = c.post("/api/search", json={"layer": edit["layer"], "context": edit["context"], "seeds": "1000-1031",
                                            "top_k": 4})
            assert r.status_code == 200, r.text
            found[name] = r.json()["warning"]
    assert "lies along the images' top edge" in found["green-hair"] and "32 searched images" in found["green-hair"]
    assert found["dark-glasses"] == ""
