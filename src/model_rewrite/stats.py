"""Streaming key statistics: the uncentered second moment C = E[k k^T] of a layer's keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import StatsConfig
from .hooks import run_until
from .latents import latent_stream
from .layers import LayerSpec


def rows_from_map(keys: torch.Tensor) -> torch.Tensor:
    """A key map (B, C, *spatial) or key batch (B, C) as rows (B * prod(spatial), C)."""
    if keys.dim() == 2:
        return keys
    return keys.flatten(2).transpose(1, 2).reshape(-1, keys.shape[1])


# Keys at least this wide are multiplied in row blocks of this height, and only the block upper triangle is
# formed: block i of the rows against columns from block i on (for 256-wide keys, 10/16 of the multiply-adds
# of k^T k; for 512, 36/64). Measured on a 2-core CPU, one thread, 3,200 keys: 18% faster than the product
# in two halves for 256- and 512-wide keys, 15% faster than the full product for 128; 64-row blocks beat
# 32 and 128 at every width (benchmarks/bench_stats.py measures collection as a whole).
_BLOCK_ROWS = 64
_BLOCK_MIN_DIM = 2 * _BLOCK_ROWS


def row_blocks(dim: int) -> list[tuple[int, int]]:
    """The row blocks (start, end) of a dim x dim accumulator: one block below `_BLOCK_MIN_DIM`."""
    if dim < _BLOCK_MIN_DIM:
        return [(0, dim)]
    return [(lo, min(lo + _BLOCK_ROWS, dim)) for lo in range(0, dim, _BLOCK_ROWS)]


class SecondMoment:
    """Streaming float64 accumulator of sum(k k^T) and the number of keys.

    `add` any batches in any order; the result equals the batch computation up to float64
    rounding. Memory is O(C^2), independent of how many keys are added. Only the block upper
    triangle is accumulated (the sum is symmetric); `sum` returns the full matrix.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu", product_dtype: torch.dtype = torch.float64) -> None:
        self._acc = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self._blocks = row_blocks(dim)
        self.count = 0
        self.product_dtype = product_dtype

    def add(self, keys: torch.Tensor) -> None:
        """keys: (N, C) rows. The batch product is formed in `product_dtype`, summed in float64."""
        self._add_columns(keys.to(self.product_dtype).T)

    def add_map(self, keys: torch.Tensor) -> None:
        """keys: a key map (B, C, *spatial), or rows (N, C). The map is laid out once as (C, B x locations),
        a copy of contiguous runs (cheaper than transposing it to rows: 0.75 against 1.3 ms for the face
        model's 50 x 256 x 8 x 8 keys), whose row blocks are contiguous operands of the products."""
        if keys.dim() == 2:
            self.add(keys)
            return
        c = keys.shape[1]
        self._add_columns(keys.to(self.product_dtype).transpose(0, 1).reshape(c, -1))

    def _add_columns(self, kt: torch.Tensor) -> None:
        """kt: (C, N), one key per column."""
        for lo, hi in self._blocks:
            self._acc[lo:hi, lo:] += (kt[lo:hi] @ kt[lo:].T).to(torch.float64)
        self.count += kt.shape[1]

    def all_reduce(self) -> None:
        """Add the sums and counts of every process of a torch.distributed group (in float64), in place."""
        from .distributed import all_sum_f64

        self._acc = all_sum_f64(self._acc)
        self.count = int(all_sum_f64(torch.tensor([float(self.count)])).item())

    def merge(self, other: "SecondMoment") -> None:
        if other._acc.shape != self._acc.shape:
            raise ValueError(f"cannot merge a {tuple(other._acc.shape)} moment into a {tuple(self._acc.shape)} one")
        self._acc += other._acc
        self.count += other.count

    @property
    def sum(self) -> torch.Tensor:
        """sum(k k^T) so far, (C, C) float64 (a new tensor)."""
        s = self._acc.clone()
        for lo, hi in self._blocks:
            s[hi:, lo:hi] = s[lo:hi, hi:].T
        return s

    def moment(self) -> torch.Tensor:
        """C = sum / count, (C_in, C_in) float64, symmetric."""
        if self.count == 0:
            raise ValueError("no keys were added")
        m = self.sum / self.count
        return (m + m.T) / 2


@dataclass(frozen=True)
class KeyStats:
    """Second moment of one layer's keys, with what it was computed from."""

    layer: str
    moment: torch.Tensor  # (C_in, C_in) float64
    count: int  # number of keys (samples x locations)
    num_samples: int
    seed: int

    @property
    def dim(self) -> int:
        return self.moment.shape[0]


def collect_key_stats(
    model: nn.Module,
    spec: LayerSpec,
    config: StatsConfig = StatsConfig(),
    *,
    latent_shape: tuple[int, ...],
    progress: Callable[[int, int], None] | None = None,
) -> KeyStats:
    """Run the model up to `spec`'s weight module on a seeded latent stream and accumulate C.

    Only the network up to the layer runs (the forward stops there). `progress(done, total)`
    is called after each batch. Under torchrun (`distributed.init`) process p runs batches p, p + N, ...
    and the float64 sums are added over processes.
    """
    from . import distributed

    rank, size = distributed.world()
    acc: SecondMoment | None = None
    done = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for b, z in enumerate(latent_stream(config.stats_seed, config.num_samples, latent_shape, config.batch_size)):
            if b % size == rank or (acc is None and b == 0):
                keys = run_until(model, spec.weight_module, z.to(device), record_output=False).input
                if acc is None:  # every process learns the key width from the first batch
                    acc = SecondMoment(keys.shape[1], keys.device, getattr(torch, config.product_dtype))
                if b % size == rank:
                    acc.add_map(keys)
            done += z.shape[0]
            if progress is not None:
                progress(done, config.num_samples)
    assert acc is not None
    if size > 1:
        acc.all_reduce()
    return KeyStats(spec.name, acc.moment().cpu(), acc.count, config.num_samples, config.stats_seed)


def stats_cache_key(model_id: str, fingerprint: str, layer: str, config: StatsConfig) -> tuple[str, dict]:
    """(readable name, key) under which a model's layer statistics are cached: the key names everything the
    statistics depend on (the weights' fingerprint, the layer, the sample count, seed and product dtype)."""
    key = {"fingerprint": fingerprint, "layer": layer, "num_samples": config.num_samples,
           "stats_seed": config.stats_seed, "product_dtype": config.product_dtype, "what": "second_moment"}
    return f"{model_id.replace('/', '_')[-40:]}-{layer}-n{config.num_samples}-s{config.stats_seed}", key
