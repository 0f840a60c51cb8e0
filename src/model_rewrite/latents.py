"""Seeds and latents: the seed syntax shared by the CLI and the web app, and latents from seeds (the same
seed gives the same latent on any run, batch and machine)."""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

import torch

from .config import MAX_SEED
from .errors import InvalidEdit

__all__ = ["MAX_SEED", "MAX_SEED_LIST", "latent_from_seed", "latent_stream", "latents_from_seeds", "parse_seeds"]
MAX_SEED_LIST = 100_000  # seeds one specification may name


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
