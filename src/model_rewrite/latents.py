"""Seeds and latents: the seed syntax shared by the CLI and the web app, and latents from image numbers in
one of two schemes (the same number gives the same latent on any run, batch and machine):

- "seeds" (ours, the default): image `seed` is standard normal from its own torch generator;
- "paper": the original authors' numbering (their `utils/zdataset.py`, `z_sample_for_model`): image `i` is
  row `i` of `numpy.random.RandomState(1).standard_normal(n * z_dim).reshape(n, z_dim)`, which is the same row
  for every `n > i` (the rows are consecutive slices of one stream), so their request files' image numbers name
  the same latents on the same model.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .config import MAX_SEED
from .errors import InvalidEdit

__all__ = ["MAX_SEED", "MAX_SEED_LIST", "latent_from_seed", "latent_stream", "latents_from_seeds", "parse_seeds"]
MAX_SEED_LIST = 100_000  # seeds one specification may name
LATENT_SCHEMES = ("seeds", "paper")  # how image numbers become latents (see the module docstring)
PAPER_SEED = 1  # the authors' RandomState seed (z_dataset_for_model's default)
MAX_PAPER_IMAGE = 100_000  # the paper scheme draws every earlier row first; the authors used images 0-999
_PAPER_CHUNK_ROWS = 4096  # rows drawn per numpy call (the stream does not depend on it)


def parse_seeds(text: str, limit: int = MAX_SEED_LIST) -> list[int]:
    """Seeds from "0-15", "3,7,12" or "0-7, 20, 30-31" (ranges inclusive), in the order given."""
    seeds: list[int] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InvalidEdit("give seeds as a range or list, e.g. '0-15' or '3,7,12'")
    for part in parts:
        m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if not m:
            raise InvalidEdit(f"cannot read seeds {part!r}: use ranges like '0-15' and lists like '3,7,12' "
                              "(seeds are integers from 0)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InvalidEdit(f"seed range {part!r} runs backwards; write it as '{hi}-{lo}'")
        if hi > MAX_SEED:
            raise InvalidEdit(f"seeds must be at most {MAX_SEED}, got {hi}")
        if len(seeds) + hi - lo + 1 > limit:
            raise InvalidEdit(f"'{text}' names more than {limit} seeds; choose a smaller range")
        seeds.extend(range(lo, hi + 1))
    return seeds


def latent_from_seed(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The latent of image `seed`: standard normal of `shape`, drawn from its own CPU generator."""
    if seed < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g)


def latents_from_seeds(seeds: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    """Stacked latents (N, *shape) of the images named by `seeds`."""
    return torch.stack([latent_from_seed(s, shape) for s in seeds])


def paper_latents(images: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    """The authors' latents (N, *shape) of image numbers `images`: row i of
    `RandomState(1).standard_normal(n * z_dim).reshape(n, z_dim)` (z_dim = prod(shape)), as float32.

    The stream is drawn in chunks of rows up to the largest number asked for; numpy's legacy normal
    generator continues across calls exactly as in one call, so each row is the same as in one draw.
    """
    wanted = [int(i) for i in images]
    if not wanted:
        return torch.zeros((0, *shape))
    if min(wanted) < 0 or max(wanted) >= MAX_PAPER_IMAGE:
        bad = min(wanted) if min(wanted) < 0 else max(wanted)
        raise InvalidEdit(f"with the paper's latents, image numbers run from 0 to {MAX_PAPER_IMAGE - 1} "
                          f"(the authors used 0-999), got {bad}")
    dim = math.prod(int(s) for s in shape)
    rng = np.random.RandomState(PAPER_SEED)
    rows: dict[int, np.ndarray] = {}
    top, done = max(wanted) + 1, 0
    while done < top:
        n = min(_PAPER_CHUNK_ROWS, top - done)
        block = rng.standard_normal(n * dim).reshape(n, dim)
        for i in set(wanted) & set(range(done, done + n)):
            rows[i] = block[i - done]
        done += n
    return torch.from_numpy(np.stack([rows[i] for i in wanted])).float().reshape(len(wanted), *shape)


def latents_for(scheme: str, images: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    """Latents (N, *shape) of image numbers `images` in the latent scheme `scheme` ("seeds" or "paper")."""
    if scheme == "seeds":
        return latents_from_seeds(images, shape)
    if scheme == "paper":
        return paper_latents(images, shape)
    raise InvalidEdit(f"unknown latents {scheme!r}; choose one of {list(LATENT_SCHEMES)}")


def check_latent_scheme(scheme: object) -> str:
    """`scheme` if it names a latent scheme, else InvalidEdit listing them."""
    if scheme not in LATENT_SCHEMES:
        raise InvalidEdit(f"latents must be one of {list(LATENT_SCHEMES)} ('seeds': ours, 'paper': the authors' "
                          f"numbering), got {scheme!r}")
    return str(scheme)


_STREAM_CHUNK = 1024  # fixed so that a stream does not depend on the caller's batch size


def latent_stream(seed: int, count: int, shape: Sequence[int], batch_size: int) -> Iterator[torch.Tensor]:
    """`count` latents of a seeded stream, yielded in batches of at most `batch_size`.

    The stream is drawn in fixed chunks, so its content depends only on (seed, count, shape).
    """
    g = torch.Generator().manual_seed(int(seed) + 0x5EED_0000)
    done = 0
    while done < count:
        chunk = torch.randn((min(_STREAM_CHUNK, count - done), *shape), generator=g)
        for i in range(0, chunk.shape[0], batch_size):
            yield chunk[i : i + batch_size]
        done += chunk.shape[0]
