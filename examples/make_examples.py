"""Write the example edits for the default face model: masks (PNG) painted as ellipses on real samples,
and the edit files that use them.

The ellipse centres and radii were read off enlarged samples (`model-rewrite sample --seeds ... --scale 5`).
Run:  python examples/make_examples.py [--layer-override LAYER --out DIR]
Then: model-rewrite apply examples/<name>/edit.json --out examples/<name>/result
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model_rewrite import KeyConfig, Selection, UpdateConfig, save_edit
from model_rewrite.cache import atomic_write_bytes
from model_rewrite.masks import png_bytes_from_mask
from model_rewrite.rewrite import Rewriter

HERE = Path(__file__).resolve().parent


def ellipses(*shapes: tuple[float, float, float, float], size: int = 64) -> torch.Tensor:
    """A (size, size) mask: the union of ellipses (cy, cx, ry, rx) in pixel units, edges softened."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = torch.zeros(size, size)
    for cy, cx, ry, rx in shapes:
        r = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        mask = torch.maximum(mask, (1.5 - r).clamp(0, 1) * (r <= 1.5))
    return mask.clamp(0, 1)


# name -> layer, context [(seed, ellipses)], copy (seed, ellipses) or None, paste (seed, ellipses), update, note;
# optional keys (KeyConfig: the rank of the context directions, default rank 1)
EXAMPLES = {
    "red-lips": dict(
        layer="b32",
        context=[(1, [(45, 32, 2.5, 8)]), (17, [(44, 34, 2.5, 7)]), (3, [(44, 32, 2.5, 7)])],
        copy=(44, [(42, 34, 3, 8)]),
        paste=(1, [(45, 32, 3, 9)]),
        update=UpdateConfig(),
        note="Copy the red lips of seed 44 onto the lips of seed 1; the context is the closed lips of three faces.",
    ),
    "add-headband": dict(
        layer="b32",
        context=[(1, [(17, 32, 4, 14)]), (3, [(15, 30, 4, 14)]), (48, [(14, 32, 4, 13)]), (27, [(17, 32, 3, 12)])],
        copy=(16, [(12, 30, 5, 22)]),
        paste=(1, [(16, 32, 5, 20)]),
        update=UpdateConfig(),
        note="A limit case: copy the white headband of seed 16 onto the forehead of seed 1; the context (foreheads) "
        "is too generic a key at this layer.",
    ),
    "add-glasses": dict(
        layer="b32",
        context=[(1, [(30, 22, 3, 6), (30, 42, 3, 6)]), (3, [(28, 24, 3, 6), (28, 42, 3, 6)]), (27, [(27, 24, 3, 6), (27, 42, 3, 6)])],
        copy=(35, [(33, 32, 7, 20)]),
        paste=(1, [(30, 32, 5, 18)]),
        update=UpdateConfig(),
        note="Copy the thick glasses of seed 35 onto the eyes of seed 1; the context is the eyes of three faces without glasses.",
    ),
    "add-mustache": dict(
        layer="b32",
        context=[(1, [(47.5, 32, 2, 8)]), (17, [(48, 27, 2, 7)]), (27, [(48.5, 32, 2, 6)])],
        copy=(41, [(46, 33, 2.5, 11)]),
        paste=(1, [(47.5, 32, 2.5, 10)]),
        update=UpdateConfig(),
        note="Copy the dark mustache of seed 41 onto the upper lip of seed 1; the context is the bare upper lips of three faces.",
    ),
    "open-smile": dict(
        layer="b32",
        context=[(1, [(50.5, 32, 2, 8)]), (3, [(49, 33, 2, 6)])],
        copy=(0, [(51.5, 31, 3, 11)]),
        paste=(1, [(50.5, 32, 3, 9)]),
        update=UpdateConfig(),
        note="Copy the open smile with teeth of seed 0 onto the closed mouth of seed 1; the context is the closed mouths of two faces.",
    ),
    "remove-glasses": dict(
        layer="b32",
        context=[(35, [(33, 32, 7, 20)]), (31, [(31, 30, 6, 20)]), (53, [(33, 32, 6, 20)])],
        copy=None,
        paste=(35, [(33, 32, 7, 20)]),
        update=UpdateConfig(erase=True, erase_units=60),
        note="Erase: zero the 60 key units (of 128) most specific to glasses (seeds 35, 31, 53) inside the glasses of seed 35.",
    ),
    "dark-glasses": dict(
        layer="b16",
        context=[(1, [(30, 32, 4, 16)]), (17, [(27.5, 32, 4, 16)]), (27, [(28, 32, 4, 15)]), (45, [(31, 32, 4, 17)]),
                 (57, [(27, 32, 4, 18)]), (0, [(27, 31, 4, 16)]), (19, [(29, 32, 4, 17)]), (22, [(28, 32, 4, 16)]),
                 (5, [(30, 32, 4, 16)]), (33, [(29, 32, 4, 16)]), (113, [(30, 32, 4, 17)]), (149, [(30, 32, 4, 16)]),
                 (91, [(30, 32, 4, 16)])],
        copy=(54, [(30, 31, 7, 24)]),
        paste=(1, [(30, 32, 6, 20)]),
        update=UpdateConfig(),
        note="Copy the dark tinted glasses of seed 54 onto the eyes of seed 1; the context is the band across both eyes "
        "(eyes and the bridge of the nose) of thirteen faces without glasses.",
    ),
    "close-mouth": dict(
        layer="b32",
        context=[(45, [(52, 33, 3, 8)]), (105, [(51, 32, 3, 8)]), (0, [(51.5, 31, 3, 11)]), (11, [(49.5, 30, 3, 8)]),
                 (91, [(51.5, 31.5, 2.5, 8)]), (149, [(52, 33, 2.5, 9)]), (113, [(52, 32, 2.5, 9)]),
                 (112, [(53, 31, 2.5, 7)]), (77, [(52.5, 29, 2.5, 6)]), (76, [(51, 33, 2.5, 8)]),
                 (156, [(52.5, 32, 2.5, 8)]), (236, [(52.5, 31, 2.5, 9)])],
        copy=(57, [(50.5, 32, 3.5, 10)]),
        paste=(45, [(52, 33, 3.5, 10)]),
        update=UpdateConfig(lr=0.005),
        keys=KeyConfig(rank=4),
        note="Copy the closed lips of seed 57 over the bared teeth of seed 45; the context is the teeth of twelve "
        "smiling faces (the first four picked by eye, the other eight the best matches of `search` over seeds 0-255), "
        "rank 4.",
    ),
    "green-hair": dict(
        layer="b64",
        context=[(57, [(6, 32, 6, 22)]), (45, [(5, 32, 5, 20)]), (1, [(5, 32, 5, 20)]), (20, [(6, 32, 8, 22)]),
                 (22, [(5, 32, 6, 20)])],
        copy=(105, [(6, 28, 6, 20)]),
        paste=(57, [(6, 32, 6, 22)]),
        update=UpdateConfig(),
        note="Copy the green hair of seed 105 onto the dark hair of seed 57; the context is the hair on top of five heads.",
    ),
    "green-streaks": dict(
        layer="b32",
        context=[(1, [(36, 9, 14, 5), (36, 55, 14, 5)]), (45, [(38, 9, 14, 5), (38, 56, 14, 5)]),
                 (22, [(36, 9, 14, 5), (36, 56, 14, 5)]), (230, [(36, 10, 14, 5), (36, 56, 14, 5)]),
                 (236, [(30, 8, 12, 5)]), (246, [(36, 5, 14, 4), (34, 55, 14, 4)]), (71, [(32, 5, 14, 4)]),
                 (85, [(36, 7, 14, 4), (36, 55, 14, 3)]), (26, [(36, 8, 14, 4), (36, 54, 14, 4)]), (25, [(36, 58, 14, 5)]),
                 (226, [(36, 7, 14, 3), (36, 52, 14, 3)])],
        copy=(103, [(30, 10, 14, 7)]),
        paste=(45, [(36, 9, 14, 6)]),
        update=UpdateConfig(preserve=0.3),
        note="Copy the green hair on the left side of seed 103's head onto the long dark hair beside the face of seed 45; "
        "the context is the long hair beside the faces of eleven heads (five picked by eye, six among the best "
        "matches of `search` over seeds 0-255).",
    ),
}


def build(name: str, rw: Rewriter, out: Path, layer: str | None = None) -> Path:
    ex = EXAMPLES[name]
    folder = out / name
    masks = folder / "masks"

    def sel(seed: int, shapes: list, role: str) -> Selection:
        mask = ellipses(*shapes)
        atomic_write_bytes(masks / f"{role}-seed{seed}.png", png_bytes_from_mask(mask))
        return Selection(seed, mask)

    context = [sel(s, e, f"context{i}") for i, (s, e) in enumerate(ex["context"])]
    copy = sel(*ex["copy"], "copy") if ex["copy"] else None
    paste = sel(*ex["paste"], "paste")
    spec = rw.new_edit(layer or ex["layer"], paste, copy, context, ex["update"], name=name, keys=ex.get("keys", KeyConfig()))
    spec = type(spec)(**{**spec.__dict__, "note": ex["note"]})
    return save_edit(folder / "edit.json", spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--layer-override", default=None)
    parser.add_argument("names", nargs="*", default=list(EXAMPLES))
    args = parser.parse_args()
    rw = Rewriter("faces")
    for name in args.names:
        print(build(name, rw, Path(args.out), args.layer_override))


if __name__ == "__main__":
    main()
