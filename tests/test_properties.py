"""Property-based tests (hypothesis): any edit file, mask, paper-format request or config value gives either a
result or the library's own error (RewriteError), never another exception, and a written file never holds a
non-finite number. Examples are bounded and derandomized, so the suite's time and outcome are fixed."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import typing
import zlib
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (the [test] extra)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import box_mask  # noqa: E402

from model_rewrite import EditSpec, Rewriter, Selection, load_edit, save_edit  # noqa: E402
from model_rewrite.cache import json_bytes  # noqa: E402
from model_rewrite.config import CONFIG_CLASSES, config_from_dict, config_to_dict, field_choices, field_range  # noqa: E402
from model_rewrite.errors import RewriteError  # noqa: E402
from model_rewrite.latents import latent_from_seed  # noqa: E402
from model_rewrite.masks import mask_from_data_url  # noqa: E402
from model_rewrite.paper_format import edit_from_paper_request  # noqa: E402

EXAMPLES = {"config": 200, "mask": 150, "edit": 150, "paper": 60, "json": 60}  # the examples each property runs


def bounded(what: str) -> settings:
    """The settings of one property: EXAMPLES[what] examples, derandomized, no example database, no deadline."""
    return settings(max_examples=EXAMPLES[what], database=None, derandomize=True, deadline=None,
                    suppress_health_check=list(HealthCheck))

# JSON values of every kind, the non-finite numbers Python's json reads (NaN, Infinity) included.
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3) | st.floats() | st.text(max_size=12)
           | st.sampled_from([math.nan, math.inf, -math.inf])
           | st.sampled_from([0, 1, -1, 2**31, 2**70, 0.5, 1e-300, 1e300, "1", "nan", "optimize", "l2", "float64"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


def strict(data: bytes | str) -> object:
    """Parse JSON refusing NaN and infinities, as a browser does."""
    def refuse(name: str) -> None:
        raise AssertionError(f"non-finite number {name} in written JSON")

    return json.loads(data, parse_constant=refuse)


# --- every config field ---------------------------------------------------------------------------

FIELDS = [(cls, f.name) for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)]


@bounded("config")
@given(st.sampled_from(FIELDS), json_values)
def test_any_config_value_is_accepted_in_range_or_refused(field, value):
    cls, name = field
    try:
        cfg = config_from_dict(cls, {name: value})
    except RewriteError:
        return
    got = getattr(cfg, name)
    want = typing.get_type_hints(cls)[name]
    assert isinstance(got, want) and not (want is int and isinstance(got, bool))
    if want is float:
        assert math.isfinite(got)
    rng, choices = field_range(cls, name), field_choices(cls, name)
    if rng is not None:
        assert rng.holds(got)
    if choices is not None:
        assert got in choices
    strict(json_bytes(config_to_dict(cfg)))


# --- masks ---------------------------------------------------------------------------------------

def png_bytes(mode: str, w: int, h: int, pixels: bytes) -> bytes:
    from PIL import Image

    bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "1": 1, "I;16": 2}[mode]
    need = w * h * bands
    raw = (pixels * (need // max(1, len(pixels)) + 1))[:need] if pixels else bytes(need)
    img = Image.frombytes(mode, (w, h), raw) if mode != "1" else Image.frombytes("L", (w, h), raw).convert("1")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def ihdr(w: int, h: int, tail: bytes, good_crc: bool = True) -> bytes:
    """A PNG signature and IHDR chunk claiming w x h, then `tail` (usually not a valid image)."""
    body = b"IHDR" + w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    crc = zlib.crc32(body) if good_crc else zlib.crc32(body) ^ 1
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + body + crc.to_bytes(4, "big") + tail


def damaged(png: bytes, where: int, byte: int) -> bytes:
    """A valid PNG with one byte replaced (a flipped bit on disk, a cut download)."""
    i = where % len(png)
    return png[:i] + bytes([byte]) + png[i + 1 :]


valid_pngs = st.builds(png_bytes, st.sampled_from(["L", "LA", "RGB", "RGBA", "1", "I;16"]), st.integers(1, 80),
                       st.integers(1, 80), st.binary(max_size=64))
mask_bytes = (valid_pngs
              | st.builds(damaged, valid_pngs, st.integers(0, 10**6), st.integers(0, 255))
              | st.builds(ihdr, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=64), st.booleans())
              | st.binary(max_size=80))
mask_urls = (st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), mask_bytes)
             | st.text(max_size=40) | st.sampled_from(["data:image/png;base64,", "data:image/png;base64,!!!!",
                                                      "data:image/jpeg;base64,AAAA"]) | json_values)


def url_of(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@bounded("mask")
@given(mask_urls, st.sampled_from([None, 32, 64]))
@example(url_of(png_bytes("L", 40, 20, b"\x01")), 32)  # wider than the model's image
@example(url_of(ihdr(20000, 20000, b"")), None)  # a decompression bomb's header
@example(url_of(ihdr(8, 8, b"IDAT", good_crc=False)), 32)  # a bad checksum (Pillow: SyntaxError)
def test_any_mask_gives_a_soft_mask_or_invalid_edit(url, max_side):
    try:
        mask = mask_from_data_url(url, max_side)
    except RewriteError:
        return
    assert mask.dim() == 2 and mask.dtype == torch.float32 and torch.isfinite(mask).all()
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert max(mask.shape) <= (max_side or 2048)


# --- edit files ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edit_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rw = Rewriter("tiny", cache_dir=tmp_path_factory.mktemp("cache"))
    m = box_mask(32, 8, 16, 8, 16)
    return rw.new_edit("b16", paste=Selection(1, m), copy=Selection(2, m), context=[Selection(3, m)], name="p").to_dict()


PLACES = [(), ("paste",), ("paste", "seed"), ("paste", "mask"), ("copy",), ("context",), ("keys",), ("update",),
          ("stats",), ("name",), ("note",), ("version",), ("format",), ("layer",), ("fingerprint",), ("factors_sha256",),
          *(("update", f.name) for f in dataclasses.fields(CONFIG_CLASSES[2])), ("keys", "rank"), ("keys", "eig_floor"),
          ("stats", "num_samples"), ("stats", "batch_size"), ("extra",)]


def mutated(data: dict, place: tuple, value: object) -> object:
    if not place:
        return value
    out = json.loads(json.dumps(data))
    node = out
    for key in place[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):  # an earlier change may have replaced the parent by a non-object
        node[place[-1]] = value
    return out


@bounded("edit")
@given(st.lists(st.tuples(st.sampled_from(PLACES), json_values | mask_urls), min_size=1, max_size=2))
@example([(("context",), {})])  # the case, accepted silently before
@example([(("context",), 5)])
@example([(("paste", "seed"), 2**70)])
@example([(("update", "preserve"), math.nan)])
@example([(("name",), {"a": 1})])
def test_any_edit_file_gives_an_edit_or_the_librarys_error(edit_data, tmp_path_factory, changes):
    data: object = edit_data
    for place, value in changes:
        data = mutated(data, place, value) if isinstance(data, dict) else data
    path = tmp_path_factory.mktemp("edit") / "e.json"
    path.write_text(json.dumps(data))  # may hold NaN: what a careless tool writes
    try:
        spec, _ = load_edit(path)
    except RewriteError:
        return
    if isinstance(data, dict) and data.get("context") is not None:  # what was accepted is what was written
        assert isinstance(data["context"], list) and len(spec.context) == len(data["context"])
    for sel in (spec.paste, spec.copy, *spec.context):  # and can be used
        if sel is not None:
            latent_from_seed(sel.seed, (1,))
            assert torch.isfinite(sel.mask).all()
    assert isinstance(spec.name, str) and isinstance(spec.note, str)
    out = path.with_name("out.json")
    save_edit(out, spec)
    written = strict(out.read_text())
    assert EditSpec.from_dict(written).to_dict() == spec.to_dict()


# --- the paper's request format ---------------------------------------------------------------------

entries = st.lists(st.lists(json_values | mask_urls, min_size=0, max_size=3) | json_values, max_size=3)


@bounded("paper")
@given(st.dictionaries(st.sampled_from(["key", "object", "paste", "extra"]), entries | json_values, max_size=4)
       | json_values)
@example({"paste": [[2**70, url_of(png_bytes("L", 8, 8, b"\x09"))]]})
def test_any_paper_request_gives_an_edit_or_the_librarys_error(request_data):
    try:
        spec = edit_from_paper_request(request_data, model="tiny", fingerprint="f", layer="b16")
    except RewriteError:
        return
    assert isinstance(spec, EditSpec) and spec.paste.mask.dim() == 2
    for sel in (spec.paste, spec.copy, *spec.context):
        if sel is not None:
            latent_from_seed(sel.seed, (1,))  # seeds that name an image
    strict(json_bytes(spec.to_dict()))


@bounded("json")
@given(json_values)
@example({"ratio": math.nan, "x": [math.inf, 1.5, {"y": -math.inf}]})
def test_written_json_is_strict_whatever_it_holds(value):
    def finite(v: object) -> object:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list) else v

    assert strict(json_bytes(value)) == finite(value)


def test_the_examples_run_are_counted():
    """The counts the issue asks to report: hypothesis examples per property (also in the CI time budget)."""
    assert sum(EXAMPLES.values()) == 620
    assert Path(__file__).read_text().count("\n@bounded(") == len(EXAMPLES)
