import json
import os

import torch.multiprocessing as mp

from cloc_mllm.eval.cache import PredictionCache, cached_predict
from cloc_mllm.eval.sharding import current_shard, gather_lists, init_distributed
from cloc_mllm.training.distributed import free_port

ITEMS = [f"k{i}" for i in range(7)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    shard = init_distributed()
    seen = []

    def predict(batch):
        seen.extend(batch)
        return [{"rank": rank} for _ in batch]

    rows = cached_predict(ITEMS, str, predict, PredictionCache(out, "t", shard.rank), shard, batch_size=2)
    gathered = gather_lists([rank], shard)
    with open(os.path.join(out, f"result{rank}.json"), "w") as f:
        json.dump(
            {
                "seen": seen,
                "rows": rows,
                "gathered": gathered,
                "shard": list(current_shard().__dict__.values()),
            },
            f,
        )
    dist.destroy_process_group()


def test_two_gloo_ranks_split_the_work_and_both_get_everything(tmp_path):
    # fork: the workers need nothing re-imported, which keeps this test to seconds
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2)]
    assert results[0]["seen"] == ITEMS[0::2] and results[1]["seen"] == ITEMS[1::2]
    for r in results:
        assert sorted(r["rows"]) == sorted(ITEMS)  # every rank holds every prediction after the gather
        assert {k: v["rank"] for k, v in r["rows"].items()} == {k: i % 2 for i, k in enumerate(ITEMS)}
        assert r["gathered"] == [0, 1]
    assert results[1]["shard"] == [1, 2]
    assert sorted(p.name for p in tmp_path.glob("t.rank*.jsonl")) == ["t.rank0.jsonl", "t.rank1.jsonl"]


def test_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    shard = init_distributed()
    assert (shard.rank, shard.world_size) == (0, 1)
    assert gather_lists([1, 2], shard) == [1, 2]
