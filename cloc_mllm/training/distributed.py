"""Process group and device set-up from the launcher's environment (torchrun, deepspeed, or none).

Both launchers export ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
multi-node runs differ only in those values. CPU runs use gloo, GPU runs nccl.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this code created the process group, so it should destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def select_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto", deepspeed: bool = False) -> DistContext:
    """Join the process group the launcher describes (a no-op for a plain single process).

    DeepSpeed always needs a process group, so a single un-launched DeepSpeed process gets a
    one-member group on localhost.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_available() and dist.is_initialized():  # the caller set it up (e.g. a notebook or a job)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if deepspeed:
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, verbose=False)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)
    if world_size > 1:
        dist.init_process_group(backend=backend)
        return DistContext(rank, world_size, local_rank, device, owns_group=True)
    return DistContext(rank, world_size, local_rank, device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if ``init_distributed`` created it."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        leave_process_group()


def leave_process_group() -> None:
    """Destroy the (initialised) process group and free this rank's DeepSpeed shared-memory segment."""
    rank = dist.get_rank()
    dist.destroy_process_group()
    release_deepspeed_shm(os.environ.get("MASTER_PORT"), rank=rank)


def free_port() -> int:
    """A free TCP port on loopback for a launcher's rendezvous (29500 may be taken by another job)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SHM_DIR = Path("/dev/shm")


def release_deepspeed_shm(
    port: int | str | None, rank: int | None = None, shm_dir: Path = SHM_DIR
) -> list[Path]:
    """Unlink DeepSpeed's CPU all-reduce segments of the rendezvous on ``port``; returns those removed.

    DeepSpeed's shared-memory all-reduce (CPU ranks on one node) creates one segment per rank (about
    70 MB), named ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``, and never unlinks it.
    /dev/shm is RAM, so every run on a new port (``torchrun --standalone``, the main job's free ports)
    would keep its segments until reboot. Unlinking a segment another rank still maps is safe: the
    memory lives until the last unmap. ``rank`` None removes every rank's (a launcher cleaning up
    after its ranks exited, crashed ones included).
    """
    if port is None or not shm_dir.is_dir():  # no /dev/shm (Windows): DeepSpeed made no segments
        return []
    ranks = "*" if rank is None else str(rank)
    removed = sorted(shm_dir.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{ranks}"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (there a 2770 x 576 x 1536 matmul runs 4.3x faster in bf16 than fp32, measured
    on 2 EPYC cores; without them bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked for, or (``auto``) where the GPU supports it; None = full fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (identity on one process); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def sum_counters(counter: Counter) -> Counter:
    """Every rank's counter added up (each rank gets the total)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Counter(counter)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(counter))
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return total


@contextlib.contextmanager
def deepspeed_broadcast_of_scalars(model: torch.nn.Module) -> Iterator[None]:
    """Around ``deepspeed.initialize`` (directly or through the HF Trainer): DeepSpeed (0.19)
    broadcasts rank 0's weights through a uint8 view, which fails on 0-d parameters (CLOC's
    temperatures, the Prompter's bias scales). Every parameter is broadcast here as it is and
    DeepSpeed's own broadcast is skipped: the same weights on every rank, no view needed."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    if dist.is_available() and dist.is_initialized():
        for param in model.parameters():
            dist.broadcast(param.data, src=0)
    with mock.patch.object(DeepSpeedEngine, "_broadcast_model", lambda engine: None):
        yield
