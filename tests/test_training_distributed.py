from collections import Counter

import torch

from cloc_mllm.training.distributed import (
    DistContext,
    all_reduce_sum,
    autocast_dtype,
    init_distributed,
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
