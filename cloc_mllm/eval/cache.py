"""Prediction cache: jsonl rows keyed by item, so an interrupted evaluation resumes where it stopped.

Each rank appends to its own file ``{name}.rank{r}.jsonl`` and flushes after every batch; on start a
rank reads *all* ranks' files of that name, so a resumed run may use a different number of processes.
A torn last line (the process died mid-write) is ignored and counted. The cache directory should be
specific to the model and settings (the runner names it by their fingerprint).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from cloc_mllm.eval.sharding import Shard, gather_lists

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PredictionCache:
    """Rows ``{"key": str, ...}``; ``directory=None`` keeps them in memory only."""

    def __init__(self, directory: str | Path | None, name: str, rank: int = 0):
        self.rows: dict[str, dict] = {}
        self.torn_lines = 0
        self.path = None if directory is None else Path(directory) / f"{name}.rank{rank}.jsonl"
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for file in sorted(self.path.parent.glob(f"{name}.rank*.jsonl")):
            self._read(file)
        self._end_torn_line()
        if self.rows:
            logger.info("%s: resuming with %d cached predictions", name, len(self.rows))

    def _read(self, file: Path) -> None:
        torn = 0
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                self.rows[row["key"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                torn += 1
        if torn:
            logger.warning("%s: ignored %d unreadable line(s)", file, torn)
        self.torn_lines += torn

    def _end_torn_line(self) -> None:
        """Start appends on a fresh line, or the first new row would be glued to a torn one."""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> dict:
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self.rows[row["key"]] = row
        if self.path is None or not rows:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())


def cached_predict(
    items: Sequence[T],
    key: Callable[[T], str],
    predict_batch: Callable[[list[T]], list[dict[str, Any]]],
    cache: PredictionCache,
    shard: Shard,
    batch_size: int,
    desc: str = "predict",
) -> dict[str, dict]:
    """Predict this rank's share of ``items`` (skipping cached ones), then gather all ranks' rows.

    ``predict_batch`` returns one row per item, in order; ``"key"`` is filled in here.
    Returns key -> row for every item of every rank.
    """
    mine = shard.take(items)
    todo = [item for item in mine if key(item) not in cache]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, disable=not shard.is_main) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            rows = predict_batch(batch)
            if len(rows) != len(batch):
                raise RuntimeError(f"{desc}: {len(rows)} predictions for a batch of {len(batch)}")
            cache.add([{**row, "key": key(item)} for item, row in zip(batch, rows, strict=True)])
            bar.update(len(batch))
    gathered = gather_lists([cache[key(item)] for item in mine], shard)
    return {row["key"]: row for row in gathered}


def cached_predict_benchmarks(
    benchmarks: Sequence[Any],
    task: str,
    predict_batch: Callable[[list], list[dict[str, Any]]],
    cache_dir: str | Path | None,
    shard: Shard,
    batch_size: int,
    desc: str,
    items_of: Callable[[Any], Sequence[Any]] = lambda bench: bench.items,
) -> dict[str, dict[str, dict]]:
    """:func:`cached_predict` over each benchmark's items (anything with a ``.key``): name -> key -> row.

    Each benchmark gets its own cache ``{task}-{benchmark name}``, so adding a benchmark to a finished
    evaluation predicts only the new one.
    """
    return {
        bench.name: cached_predict(
            items_of(bench),
            key=lambda item: item.key,
            predict_batch=predict_batch,
            cache=PredictionCache(cache_dir, f"{task}-{bench.name}", shard.rank),
            shard=shard,
            batch_size=batch_size,
            desc=f"{desc} {bench.name}",
        )
        for bench in benchmarks
    }
