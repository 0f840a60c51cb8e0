"""Latents from seeds: the same seed gives the same latent on any run, batch and machine."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch


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
