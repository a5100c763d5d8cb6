import json

import pytest

from cloc_mllm.eval.cache import PredictionCache, cached_predict
from cloc_mllm.eval.sharding import Shard


class CountingPredictor:
    """Predicts len(item) and records every item it was asked about."""

    def __init__(self, fail_after: int | None = None):
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, batch):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.seen += batch
        return [{"value": len(item)} for item in batch]


ITEMS = [f"item{'x' * i}" for i in range(10)]


def test_interrupted_run_resumes_without_repeating_work(tmp_path):
    first = CountingPredictor(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        cached_predict(ITEMS, str, first, PredictionCache(tmp_path, "task"), Shard(), batch_size=2)
    assert first.seen == ITEMS[:4]
    # a torn last line, as if the process died mid-write
    with open(tmp_path / "task.rank0.jsonl", "a") as f:
        f.write('{"key": "itemxxxx')
    cache = PredictionCache(tmp_path, "task")
    assert len(cache) == 4 and cache.torn_lines == 1
    second = CountingPredictor()
    rows = cached_predict(ITEMS, str, second, cache, Shard(), batch_size=3)
    assert second.seen == ITEMS[4:]
    assert {k: r["value"] for k, r in rows.items()} == {item: len(item) for item in ITEMS}
    # a third run predicts nothing
    third = CountingPredictor()
    cached_predict(ITEMS, str, third, PredictionCache(tmp_path, "task"), Shard(), batch_size=3)
    assert third.seen == []


def test_cache_reads_other_ranks_files_and_memory_mode(tmp_path):
    (tmp_path / "task.rank1.jsonl").write_text(json.dumps({"key": ITEMS[0], "value": -1}) + "\n")
    cache = PredictionCache(tmp_path, "task", rank=0)
    assert cache[ITEMS[0]]["value"] == -1  # a resumed run with another world size keeps that work
    memory = PredictionCache(None, "task")
    memory.add([{"key": "a", "value": 1}])
    assert "a" in memory and memory.path is None


def test_predictor_must_answer_every_item(tmp_path):
    with pytest.raises(RuntimeError, match="1 predictions for a batch of 2"):
        cached_predict(ITEMS, str, lambda batch: [{}], PredictionCache(None, "t"), Shard(), batch_size=2)


def test_shard_take_is_balanced_and_disjoint():
    shards = [Shard(r, 3) for r in range(3)]
    parts = [s.take(ITEMS) for s in shards]
    assert sorted(sum(parts, [])) == sorted(ITEMS)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert Shard().is_main and not shards[1].is_main
