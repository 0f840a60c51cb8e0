"""Sharding work over seeds across processes with torch.distributed, as launched by `torchrun`.

Every process runs the same program on the same model. `init` joins the process group that torchrun describes
in the environment (gloo for CPU devices, NCCL for CUDA, one GPU per local rank); without it, or with one
process, every function here is the plain single-process computation.

- Key statistics (`stats.collect_key_stats`): batch b of the seeded latent stream is run by process
  b mod N; the float64 sums of k k^T and the key counts are added over processes (all_reduce in float64),
  so the result equals one process's up to the order of float64 additions.
- Evaluation (`Rewriter.sample`, `Rewriter.heat`, and so the quality report, interference, suggestions
  and the benchmarks): each process renders a contiguous block of the seeds; the blocks are gathered in
  order, so every process holds every image, as one process would.
"""

from __future__ import annotations

import atexit
import os
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside a process group."""
    if not active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return world()[0] == 0


def init(device: str = "cpu") -> str:
    """Join the process group torchrun set up (WORLD_SIZE > 1 in the environment); return the device this
    process should use (`cuda` becomes `cuda:LOCAL_RANK`). Without torchrun: nothing, `device` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return device
    cuda = device.startswith("cuda")
    if cuda and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        # Leave the group while the interpreter is whole: a process that exits with the group alive can be
        # aborted ("terminate called without an active exception") as gloo's threads are torn down.
        atexit.register(finish)
    return device


def finish() -> None:
    """Leave the process group (`init` arranges this at exit); nothing outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum_f64(t: torch.Tensor) -> torch.Tensor:
    """The float64 sum of `t` over processes (a new tensor on t's device)."""
    if not active():
        return t.to(torch.float64).clone()
    x = t.to(_comm_device(), torch.float64).clone()
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
    return x.to(t.device)


def all_agree(flag: bool) -> bool:
    """True when `flag` is true in every process (so that all take the same branch)."""
    if not active():
        return flag
    x = torch.tensor([1 if flag else 0], device=_comm_device())
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MIN)
    return bool(x.item())


def block(n: int) -> range:
    """This process's contiguous block of range(n): blocks of ceil(n / N), the last ones shorter or empty."""
    rank, size = world()
    step = -(-n // size)
    return range(min(n, rank * step), min(n, (rank + 1) * step))


def sharded(fn: Callable[[list[T]], torch.Tensor], items: Sequence[T]) -> torch.Tensor:
    """`fn(items)` (a tensor with one row per item), each process computing its `block` of the items; the
    rows are gathered in order on every process."""
    items = list(items)
    if not active() or len(items) < 2:
        return fn(items)
    rank, size = world()
    part = block(len(items))
    step = -(-len(items) // size)
    mine = fn([items[i] for i in part]) if len(part) else None
    meta: list = [None] * size
    torch.distributed.all_gather_object(meta, None if mine is None else (tuple(mine.shape[1:]), str(mine.dtype)))
    shape, dtype = next(m for m in meta if m is not None)
    dtype = getattr(torch, dtype.split(".")[-1])
    out_device = mine.device if mine is not None else torch.device("cpu")
    padded = torch.zeros((step, *shape), dtype=dtype, device=_comm_device())
    if mine is not None:
        padded[: len(mine)] = mine.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat(parts)[: len(items)].to(out_device)
