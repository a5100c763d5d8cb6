"""Splitting evaluation work across processes (``torchrun``) and gathering the results.

Each rank takes every ``world_size``-th item, so shards stay balanced whatever the order, and the
predictions are gathered with ``torch.distributed.all_gather_object`` (gloo on CPU, nccl on GPU).
A single process is a world of one; nothing here needs a process group to exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's slice: items rank, rank + world_size, ..."""
        return list(items[self.rank :: self.world_size])


def init_distributed() -> Shard:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1), else a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current_shard()


def current_shard() -> Shard:
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def gather_lists(items: list[Any], shard: Shard) -> list[Any]:
    """Concatenate every rank's list (rank order) on every rank; a world of one returns ``items``."""
    if shard.world_size == 1:
        return items
    parts: list[list[Any]] = [[] for _ in range(shard.world_size)]
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def barrier(shard: Shard) -> None:
    if shard.world_size > 1:
        dist.barrier()
