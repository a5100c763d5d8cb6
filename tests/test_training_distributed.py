import os
from collections import Counter

import torch

from cloc_mllm.training.distributed import (
    DistContext,
    all_reduce_sum,
    autocast_dtype,
    init_distributed,
    release_deepspeed_shm,
    shutdown,
    sum_counters,
)


def test_single_process_needs_no_group(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu"))
    assert ctx.is_main and not ctx.is_distributed and not ctx.owns_group
    assert all_reduce_sum(torch.tensor([2.0])).item() == 2.0
    assert sum_counters(Counter(a=2)) == Counter(a=2)
    shutdown(ctx)  # nothing to tear down


def test_autocast_only_where_asked_or_supported():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None  # CPU bf16 autocast is slow: only on request
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp32", cpu) is None


def test_release_deepspeed_shm_removes_only_that_rendezvous(tmp_path):
    uid = os.getuid()
    ours = [tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29512_{rank}" for rank in (0, 1)]
    others = [
        tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29513_0",  # another run's port
        tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_129512_0",  # a port ending the same
        tmp_path / f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_29512_0",  # another user's
        tmp_path / "torch_shm_29512_0",
    ]
    for path in ours + others:
        path.write_bytes(b"x")
    assert release_deepspeed_shm(29512, rank=1, shm_dir=tmp_path) == [ours[1]]
    assert release_deepspeed_shm("29512", shm_dir=tmp_path) == [ours[0]]
    assert release_deepspeed_shm(None, shm_dir=tmp_path) == []
    assert release_deepspeed_shm(29513, shm_dir=tmp_path / "absent") == []  # a system without /dev/shm
    assert sorted(tmp_path.iterdir()) == sorted(others)
