"""The original authors' request files (issue 14): every one of the 21 real files in shared/paper-requests
applies, searches or gives its one-line error, on the tiny model and on a small rosinality StyleGAN2 named
by the authors' layer names; their latents; their layer numbering; convert; replay-paper.

Expected values come from outside the code under test: which file does what from the fields the files hold
(listed by hand in EXPECTED from decoding them), numpy's RandomState stream for the latents, rosinality's
`convs.N` key order for the layer names, numpy block means for mask resizing.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FACE_MODEL_REASON, has_face_model
from stylegan2_reference import rosinality_state_dict

from model_rewrite import Rewriter
from model_rewrite.cli import main
from model_rewrite.errors import InvalidEdit, LayerNotFound
from model_rewrite.layers import resolve_layer
from model_rewrite.models.formats.rosinality import stylegan2_from_rosinality
from model_rewrite.paper_format import edit_from_paper_request

REQUESTS = Path(os.environ.get("MODEL_REWRITE_PAPER_REQUESTS",
                               Path(__file__).resolve().parents[2] / "shared" / "paper-requests"))
needs_requests = pytest.mark.skipif(not REQUESTS.is_dir(), reason=f"the authors' request files are not at {REQUESTS} "
                                    "(set MODEL_REWRITE_PAPER_REQUESTS to the shared/paper-requests folder)")

# What each real file holds (decoded by hand): a paste -> it applies (without object: erase); no paste -> a
# search request (ranked by its query when it has one, else its key); the reflection file -> an error.
APPLY = ["proggan__church__grass_to_road", "proggan__church__multikey_spire2square", "proggan__church__sky2tree",
         "proggan__church__spire2square", "proggan__church__spire2tree", "proggan__church__spire2tree2",
         "proggan__church__square2spire", "proggan__church__tree2building", "stylegan__celebhq__erase_eyeglasses",
         "stylegan__celebhq__lightbeard", "stylegan__celebhq__multikey_baby_mustache",
         "stylegan__celebhq__multikey_child_mustache", "stylegan__celebhq__multikey_mustache",
         "stylegan__celebhq__mustache_kid_eyebrows", "stylegan__celebhq__no_earring",
         "stylegan__celebhq__removing_eyeglasses_2"]
ERASE = ["stylegan__church__multikey_watermark_with_paste"]
SEARCH = {"proggan__church__multikey_below_watermark": "context", "proggan__church__multikey_bottombar": "query",
          "proggan__church__multikey_waternobot": "context"}
ERROR = ["reflections__progan-kitchen__posneg"]
EXPECTED = {**{n: "apply" for n in APPLY}, **{n: "erase" for n in ERASE}, **{n: "search" for n in SEARCH},
            **{n: "error" for n in ERROR}}
FAST = ["--num-samples", "50", "--steps", "5", "--samples", "2", "--quiet"]
FAST_SEARCH = ["--num-samples", "50", "--samples", "4", "--quiet"]


def png_url(mask: np.ndarray) -> str:
    """A PNG data URL as the authors' widget writes masks: white RGBA, painted where alpha > 0."""
    from PIL import Image

    a = (np.clip(mask, 0, 1) * 255).round().astype(np.uint8)
    rgba = np.stack([np.where(a > 0, 255, 0).astype(np.uint8)] * 3 + [a], -1)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def box(size: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    """A box mask at `size` px, corners given as fractions of the side."""
    m = np.zeros((size, size))
    m[int(y0 * size):int(y1 * size), int(x0 * size):int(x1 * size)] = 1.0
    return m


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: one thread runs them several times faster than two fighting for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("paper-cache"))


def rosinality_checkpoint(folder: Path, size: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """A small random-weight rosinality checkpoint of `size` px, and its state dict."""
    sd, latent_avg = rosinality_state_dict(size=size, style_dim=32, n_mlp=2, seed=3,
                                           channels={4: 16, 8: 16, 16: 12, 32: 8, 64: 8})
    path = folder / f"sg2-{size}.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, path)
    return path, sd


@pytest.fixture(scope="module")
def sg2(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """64 px, so that the authors' layer2..layer10 all exist."""
    return rosinality_checkpoint(tmp_path_factory.mktemp("sg2"), 64)


@pytest.fixture(scope="module")
def sg2_32(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """32 px (layer2..layer8), four times cheaper to run, for the 21 files."""
    return rosinality_checkpoint(tmp_path_factory.mktemp("sg2"), 32)


# --- the 21 real files ----------------------------------------------------------------------------

def test_the_expected_outcomes_cover_every_file_in_the_folder():
    if not REQUESTS.is_dir():
        pytest.skip(f"the authors' request files are not at {REQUESTS}")
    assert sorted(p.stem for p in REQUESTS.glob("*.json")) == sorted(EXPECTED)


def check_outcome(name: str, model: list[str], layer: str, tmp_path: Path, capsys) -> dict | None:
    """Run `apply` (and for search requests `search`) on one real file; check it did what EXPECTED says."""
    path = REQUESTS / f"{name}.json"
    args = [*model, "--layer", layer, "--latents", "paper"]
    kind = EXPECTED[name]
    if kind == "error":
        err = one_line_error(capsys, ["apply", str(path), *args, "--out", str(tmp_path / "x")])
        assert "reflection experiment" in err and "not an edit request" in err
        return None
    if kind == "search":
        err = one_line_error(capsys, ["apply", str(path), *args, "--out", str(tmp_path / "x"), *FAST])
        assert "search request" in err and "model-rewrite search" in err
        assert main(["search", str(path), *args, "--out", str(tmp_path / "s"), *FAST_SEARCH, "--top", "2"]) == 0
        found = json.loads((tmp_path / "s" / "matches.json").read_text())
        assert found["ranked_by"] == SEARCH[name] and len(found["ranking"]) == 4  # FAST_SEARCH: 4 samples
        return found
    assert main(["apply", str(path), *args, "--out", str(tmp_path / "a"), *FAST]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert np.isfinite(report["ratio"]) and report["latents"] == "paper"
    written = json.loads((tmp_path / "a" / "edit.json").read_text())
    raw = json.loads(path.read_text())  # every selection is kept, with the file's image numbers
    assert [s["seed"] for s in written["context"]] == [k[0] for k in raw.get("key", [])]
    assert written["paste"]["seed"] == raw["paste"][0]
    assert (written["copy"] or {}).get("seed") == (raw["object"][0] if "object" in raw else None)
    assert (written["query"] or {}).get("seed") == (raw["query"][0] if "query" in raw else None)
    assert written["update"]["erase"] == (kind == "erase")
    return written


@needs_requests
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_file_on_the_tiny_model(name, tmp_path, cache, capsys):
    check_outcome(name, ["--model", "tiny", "--cache-dir", cache], "b16", tmp_path, capsys)


@needs_requests
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_file_on_a_stylegan2_at_the_authors_layer_names(name, sg2_32, tmp_path, cache, capsys):
    layer = {"proggan": "layer6"}.get(name.split("__")[0], "layer8")
    written = check_outcome(name, ["--model", f"stylegan2:{sg2_32[0]}", "--cache-dir", cache], layer, tmp_path, capsys)
    if written is not None and "layer" in written:  # edit files store our name: layer6 = b16.conv1, layer8 = b32.conv1
        assert written["layer"] == {"layer6": "b16.conv1", "layer8": "b32.conv1"}[layer]


@pytest.mark.slow
@pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)
@needs_requests
@pytest.mark.parametrize("name", ["stylegan__celebhq__lightbeard", "stylegan__church__multikey_watermark_with_paste",
                                  "proggan__church__multikey_bottombar"])
def test_some_real_files_on_the_default_face_model(name, tmp_path, cache, capsys):
    check_outcome(name, ["--model", "faces", "--cache-dir", cache], "b32", tmp_path, capsys)


# --- masks ----------------------------------------------------------------------------------------

def test_masks_of_any_square_size_are_area_averaged_to_the_image_size():
    rng = np.random.default_rng(0)
    painted = (rng.random((1024, 1024)) > 0.7) * rng.integers(1, 256, (1024, 1024)) / 255.0
    spec = edit_from_paper_request({"paste": [2, png_url(painted)], "object": [5, png_url(box(256, .2, .6, .3, .5))]},
                                   model="m", fingerprint="f", layer="b16", resolution=32)
    alpha = np.round(painted * 255) / 255  # what the PNG stores
    expected = alpha.reshape(32, 32, 32, 32).mean(axis=(1, 3))  # each 32x32 block's mean
    expected = np.round(expected * 255) / 255  # kept at 8 bits, as an edit file stores it
    np.testing.assert_allclose(spec.paste.mask.numpy(), expected, atol=1e-6)
    copy = np.round(box(256, .2, .6, .3, .5).reshape(32, 8, 32, 8).mean(axis=(1, 3)) * 255) / 255
    np.testing.assert_allclose(spec.copy.mask.numpy(), copy, atol=1e-6)
    assert spec.update.erase is False and spec.paste.seed == 2


def test_a_mask_that_is_not_square_or_not_a_png_is_a_clear_error(tmp_path, capsys):
    from PIL import Image

    wide = png_url(np.ones((200, 256)))
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256), 255, np.uint8)).save(buf, format="JPEG")
    jpeg_as_png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    jpeg = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    cases = [(wide, "not square"), (jpeg_as_png, "JPEG image labelled as PNG"), (jpeg, "must be a PNG data URL")]
    for url, match in cases:
        path = tmp_path / "req.json"
        path.write_text(json.dumps({"paste": [1, png_url(box(256, .2, .5, .2, .5))], "object": [3, url]}))
        err = one_line_error(capsys, ["apply", str(path), "--model", "tiny", "--layer", "b16", "--out", str(tmp_path / "o")])
        assert match in err and "object" in err
    with pytest.raises(InvalidEdit, match="one \\[imgnum, mask\\] pair"):
        edit_from_paper_request({"paste": [[1, wide]]}, model="m", fingerprint="f", layer="b16")


# --- the authors' latents -------------------------------------------------------------------------

def test_the_authors_latents_are_numpys_rows_whatever_n():
    sd, latent_avg = rosinality_state_dict(size=8, style_dim=512, n_mlp=1, seed=0, channels={4: 8, 8: 8})
    rw = Rewriter(stylegan2_from_rosinality({"g_ema": sd, "latent_avg": latent_avg}, "z512"), latents="paper")
    stream = np.random.RandomState(1).standard_normal(5000 * 512).reshape(5000, 512)
    short = np.random.RandomState(1).standard_normal(6 * 512).reshape(6, 512)
    np.testing.assert_array_equal(stream[:6], short)  # row i does not depend on n
    images = [0, 1, 2, 5, 999, 4999]  # the authors used 0-999; 4999 is past one of the code's draws of 4096 rows
    z = rw.latents(images)
    assert z.dtype == torch.float32 and z.shape == (6, 512)
    np.testing.assert_array_equal(z.numpy(), stream[images].astype(np.float32))
    with torch.no_grad():  # and the images are the model's images of those latents
        torch.testing.assert_close(rw.sample([5]), rw.model(torch.from_numpy(stream[5:6]).float()))
    tiny = Rewriter("tiny", latents="paper")  # reshaped to the model's latent shape (16, 1, 1)
    rows = np.random.RandomState(1).standard_normal(4 * 16).reshape(4, 16)
    np.testing.assert_array_equal(tiny.latents([3, 0]).numpy(), rows[[3, 0]].reshape(2, 16, 1, 1).astype(np.float32))
    assert not torch.equal(Rewriter("tiny").latents([3]), tiny.latents([3]))  # our seeds stay the default


def test_an_edit_made_with_the_authors_latents_refuses_other_latents(tmp_path, capsys):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"paste": [1, png_url(box(32, .2, .5, .2, .5))], "object": [3, png_url(box(32, .5, .8, .5, .8))]}))
    assert main(["convert", str(req), "--model", "tiny", "--layer", "b16", "--latents", "paper", "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["latents"] == "paper"
    err = one_line_error(capsys, ["apply", str(tmp_path / "e.json"), "--model", "tiny", "--latents", "seeds", "--out", str(tmp_path / "o")])
    assert "'paper' latents" in err and "--latents paper" in err


# --- the authors' layer names ---------------------------------------------------------------------

def test_the_authors_layer_names_name_rosinalitys_convs_in_order(sg2, capsys):
    path, sd = sg2
    rw = Rewriter(f"stylegan2:{path}")
    model = rw.model
    n_convs = len([k for k in sd if k.startswith("convs.") and k.endswith(".conv.weight")])
    assert n_convs == 8
    expected = {"layer2": sd["conv1.conv.weight"][0], **{f"layer{n + 3}": sd[f"convs.{n}.conv.weight"][0] for n in range(n_convs)}}
    for alias, weight in expected.items():
        spec = resolve_layer(model, alias)
        assert torch.equal(model.get_parameter(spec.param_path), weight), alias
        assert resolve_layer(model, spec.name) == spec  # the alias and our name are one layer
    shown = {row.alias: row.name for row in rw.layers()}
    assert shown == {alias: resolve_layer(model, alias).name for alias in expected}
    assert main(["layers", "--model", f"stylegan2:{path}"]) == 0
    assert "layer8" in capsys.readouterr().out
    with pytest.raises(LayerNotFound, match="layer1 is not editable.*constant"):
        resolve_layer(model, "layer1")
    with pytest.raises(LayerNotFound, match="not editable"):
        resolve_layer(Rewriter("tiny").model, "layer8")  # only StyleGAN2 has the authors' numbering


# --- convert and search ---------------------------------------------------------------------------

def test_request_to_edit_file_to_apply_gives_the_same_delta_as_the_request(tmp_path, cache):
    from safetensors.torch import load_file

    req = tmp_path / "req.json"
    req.write_text(json.dumps({"key": [[4, png_url(box(256, .3, .6, .3, .6))], [7, png_url(box(256, .4, .7, .2, .5))]],
                               "object": [2, png_url(box(1024, .1, .4, .1, .4))], "paste": [4, png_url(box(256, .3, .6, .3, .6))],
                               "query": [9, png_url(box(256, .5, .9, .5, .9))]}))
    common = ["--model", "tiny", "--latents", "paper", "--cache-dir", cache]
    assert main(["apply", str(req), *common, "--layer", "b16", "--out", str(tmp_path / "direct"), *FAST]) == 0
    assert main(["convert", str(req), *common, "--layer", "b16", "--out", str(tmp_path / "edit.json")]) == 0
    converted = json.loads((tmp_path / "edit.json").read_text())
    assert converted["query"]["seed"] == 9 and [c["seed"] for c in converted["context"]] == [4, 7]
    assert main(["apply", str(tmp_path / "edit.json"), *common, "--out", str(tmp_path / "via"), *FAST]) == 0
    a, b = load_file(tmp_path / "direct" / "edit.safetensors"), load_file(tmp_path / "via" / "edit.safetensors")
    assert torch.equal(a["factor"], b["factor"]) and torch.equal(a["dirs"], b["dirs"])


def test_search_ranks_by_the_query_regions_direction(tmp_path, cache):
    req = tmp_path / "req.json"
    q, k = png_url(box(32, .1, .4, .1, .4)), png_url(box(32, .6, .9, .5, .9))
    req.write_text(json.dumps({"key": [[2, k], [6, k]], "query": [3, q]}))
    assert main(["search", str(req), "--model", "tiny", "--layer", "b16", "--cache-dir", cache, "--num-samples", "50",
                 "--samples", "12", "--quiet", "--out", str(tmp_path / "s")]) == 0
    found = json.loads((tmp_path / "s" / "matches.json").read_text())
    rw = Rewriter("tiny", cache_dir=cache)
    from model_rewrite import Selection, StatsConfig
    from model_rewrite.masks import mask_from_data_url

    d = rw.directions("b16", [Selection(3, mask_from_data_url(q))], stats=StatsConfig(num_samples=50))[0]
    keys = []  # the layer's input, read by a plain forward hook
    handle = rw.model.b16.conv.register_forward_hook(lambda m, inp, out: keys.append(inp[0]))
    rw.sample(list(range(1000, 1012)))
    handle.remove()
    scores = torch.einsum("nchw,c->nhw", keys[0], d).flatten(1).amax(1)
    order = torch.argsort(scores, descending=True).tolist()
    assert found["ranked_by"] == "query"
    assert [r["seed"] for r in found["ranking"]] == [1000 + i for i in order]
    np.testing.assert_allclose([r["score"] for r in found["ranking"]], scores[order].numpy(), rtol=1e-5)


# --- replay-paper ---------------------------------------------------------------------------------

def test_replay_paper_runs_the_four_experiments_at_the_papers_layers(sg2, tmp_path, cache, capsys):
    folder = tmp_path / "masks"
    folder.mkdir()
    m256 = lambda *b: png_url(box(256, *b))  # noqa: E731
    (folder / "dome2spire.json").write_text(json.dumps({"query": [20, m256(.1, .3, .4, .6)], "object": [8, m256(.1, .3, .4, .6)],
                                                        "paste": [96, m256(.1, .3, .4, .6)]}))
    (folder / "dome2tree.json").write_text(json.dumps({"query": [81, m256(.1, .3, .4, .6)], "key": [[81, m256(.1, .3, .4, .6)]],
                                                       "object": [81, m256(.5, .8, .1, .4)], "paste": [96, m256(.1, .3, .4, .6)]}))
    (folder / "dome2castle_layer6_with_context.json").write_text(json.dumps(
        {"object": [66, m256(.2, .5, .2, .5)], "query": [90, m256(.2, .5, .2, .5)],
         "key": [[76, m256(.1, .4, .3, .6)], [10, m256(.2, .5, .2, .5)]], "paste": [10, m256(.2, .5, .2, .5)]}))
    (folder / "smile.json").write_text(json.dumps({"object": [4, png_url(box(1024, .6, .8, .3, .7))],
                                                   "paste": [0, png_url(box(1024, .6, .8, .3, .7))],
                                                   "query": [0, png_url(box(1024, .6, .8, .3, .7))]}))
    out = tmp_path / "replay"
    model = ["--model", f"stylegan2:{sg2[0]}", "--cache-dir", cache]
    assert main(["replay-paper", *model, "--requests", str(folder), "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latents"] == "paper"
    # the paper's layers (metrics/load_mask.py) under our names: layer8 = convs.5, layer6 = convs.3, layer10 = convs.7
    assert [(r["experiment"], r["paper_layer"], r["layer"]) for r in summary["experiments"]] == [
        ("dome2spire", "layer8", "b32.conv1"), ("dome2tree", "layer8", "b32.conv1"),
        ("dome2castle", "layer6", "b16.conv1"), ("smile", "layer10", "b64.conv1")]
    for name in ("dome2spire", "dome2tree", "dome2castle", "smile"):
        report = json.loads((out / name / "report.json").read_text())
        assert np.isfinite(report["ratio"]) and report["edits"][0]["layer"] == json.loads((out / name / "edit.json").read_text())["layer"]
        assert (out / name / "grid.png").exists()
    (folder / "smile.json").unlink()
    err = one_line_error(capsys, ["replay-paper", *model, "--requests", str(folder), "--out", str(out)])
    assert "smile.json" in err and "davidbau/rewriting" in err


def test_the_authors_noise_from_the_model_name(sg2):
    path, sd = sg2
    rw = Rewriter(f"stylegan2:{path}?truncation_psi=0.5&noise=paper", latents="paper")
    model = rw.model
    for block, res in (("b4", 4), ("b8", 8), ("b64", 64)):  # their NoiseInjectionF: RandomState(0).randn(1, H*W)
        expected = np.random.RandomState(0).randn(1, res * res).astype("float32").reshape(res, res)
        for conv in ("conv0", "conv1") if block != "b4" else ("conv1",):
            np.testing.assert_array_equal(getattr(getattr(model, block), conv).noise_const.numpy(), expected)
    assert model.noise_mode == "const" and model.truncation_psi == 0.5
    assert not torch.equal(model.b8.conv0.noise_const, sd["noises.noise_1"].reshape(8, 8))  # not the checkpoint's
    with pytest.raises(Exception, match="noise=paper"):
        Rewriter(f"stylegan2:{path}?noise=checkpoint")
