"""Streaming shard input with an exact, resumable position that does not depend on the world size.

The data is cut into ``S`` independent *streams* (fixed for a run). Stream ``s`` reads its own share of
the shards each epoch (the epoch's shard permutation, every S-th shard; or shards drawn with
replacement when resampling), shuffles raw records in its own buffer, then decodes. Each micro-batch
takes the same number of samples from every stream, so the global batch of a step is the same set of
samples whatever the number of ranks and workers: ranks own streams ``s % world == rank`` and each
DataLoader worker a subset of its rank's streams.

A stream's position is ``(epoch, records emitted by its shuffle buffer this epoch)``. Resuming replays
the epoch's raw records through the (seeded) buffer without decoding them, then carries on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.collate import CLOCCollator
from ..data.shards import ShardSample, decode_sample, raw_records

# Token tensors are padded to the longest in the batch; when parts are joined they are padded again.
_TOKEN_KEYS = ("input_ids", "region_input_ids")
_MASK_KEYS = ("attention_mask", "region_attention_mask")


def epoch_shards(
    urls: Sequence[str], stream: int, num_streams: int, epoch: int, seed: int, resample: bool
) -> list[str]:
    """The shards stream ``stream`` reads in ``epoch`` (a pure function of its arguments)."""
    if resample:
        rng = np.random.default_rng([seed, epoch, stream, 1])
        count = -(-len(urls) // num_streams)
        return [urls[i] for i in rng.integers(0, len(urls), size=count)]
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(urls))
    return [urls[i] for i in order[stream::num_streams]]


def shuffled(records: Iterator[dict], buffer_size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer: fill ``buffer_size`` records, then emit a random one per record read."""
    if buffer_size <= 1:
        yield from records
        return
    buffer: list[dict] = []
    for record in records:
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        j = int(rng.integers(len(buffer)))
        yield buffer[j]
        buffer[j] = record
    while buffer:
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()


class SampleStream:
    """One stream's decoded samples, forever, from position ``(epoch, position)``.

    ``epoch`` / ``position`` always describe the next record to emit, so saving them after a sample
    was used and starting a new stream from them continues exactly.
    """

    def __init__(
        self,
        urls: Sequence[str],
        index: int,
        num_streams: int,
        seed: int,
        buffer_size: int,
        resample: bool,
        epoch: int = 0,
        position: int = 0,
        stats: Counter | None = None,
    ):
        self.urls, self.index, self.num_streams = list(urls), index, num_streams
        self.seed, self.buffer_size, self.resample = seed, buffer_size, resample
        self.epoch, self.position = epoch, position
        self.stats = Counter() if stats is None else stats

    def __iter__(self) -> Iterator[ShardSample]:
        while True:
            shards = epoch_shards(
                self.urls, self.index, self.num_streams, self.epoch, self.seed, self.resample
            )
            rng = np.random.default_rng([self.seed, self.epoch, self.index, 2])
            records = shuffled(raw_records(shards, self.stats), self.buffer_size, rng)
            emitted = 0
            for emitted, record in enumerate(records, start=1):
                if emitted <= self.position:
                    continue  # replaying up to the resume point: bytes only, nothing decoded
                self.position = emitted
                sample = decode_sample(record, self.stats)
                if sample is not None:
                    yield sample
            if emitted == 0:
                raise RuntimeError(
                    f"data stream {self.index}: epoch {self.epoch} read no samples from {shards}"
                )
            self.epoch, self.position = self.epoch + 1, 0


def concat_batches(parts: Sequence[dict[str, Tensor]], pad_token_id: int) -> dict[str, Tensor]:
    """Join collated batches along dim 0, padding token tensors to the longest text first."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if key in _TOKEN_KEYS or key in _MASK_KEYS:
            length = max(t.shape[-1] for t in tensors)
            value = pad_token_id if key in _TOKEN_KEYS else 0
            tensors = [F.pad(t, (0, length - t.shape[-1]), value=value) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


def rank_streams(num_streams: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, num_streams, world_size))


class StreamDataset(IterableDataset):
    """Yields ``(batch part, stream positions (k, 3) [stream, epoch, position], counters delta)``: one
    part per micro-batch from the streams this worker owns, ``samples_per_stream`` from each."""

    def __init__(
        self,
        urls: Sequence[str],
        streams: Sequence[int],
        num_streams: int,
        positions: Tensor,
        samples_per_stream: int,
        collator: CLOCCollator,
        seed: int,
        buffer_size: int,
        resample: bool,
    ):
        self.urls, self.streams, self.num_streams = list(urls), list(streams), num_streams
        self.positions = positions.clone()  # (S, 2) epoch, position
        self.samples_per_stream = samples_per_stream
        self.collator, self.seed, self.buffer_size, self.resample = collator, seed, buffer_size, resample

    def _my_streams(self) -> list[int]:
        info = get_worker_info()
        return self.streams if info is None else self.streams[info.id :: info.num_workers]

    def _stream(self, index: int, stats: Counter) -> SampleStream:
        epoch, position = (int(v) for v in self.positions[index])
        return SampleStream(
            self.urls,
            index,
            self.num_streams,
            self.seed,
            self.buffer_size,
            self.resample,
            epoch,
            position,
            stats,
        )

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], Tensor, dict[str, int]]]:
        stats = self.collator.stats
        streams = [self._stream(s, stats) for s in self._my_streams()]
        iterators = [iter(stream) for stream in streams]
        reported: Counter = Counter()
        pad = self.collator.tokenizer.pad_token_id or 0
        while True:
            parts = []
            for stream, iterator in zip(streams, iterators):
                self.collator.epoch = stream.epoch  # region sampling differs per epoch, same on resume
                parts.append(self.collator([next(iterator) for _ in range(self.samples_per_stream)]))
            rows = torch.tensor([[s.index, s.epoch, s.position] for s in streams], dtype=torch.long)
            delta = dict(stats - reported)  # a dict: DataLoader's convert would *add* a Counter to itself
            reported = Counter(stats)
            yield concat_batches(parts, pad), rows, delta


class MicroBatches:
    """This rank's micro-batches, joined from its workers' parts, with the stream positions and data
    counters of everything handed out so far (what a checkpoint must record)."""

    def __init__(self, dataset: StreamDataset, num_workers: int, pin_memory: bool = False):
        if num_workers > len(dataset.streams):
            raise ValueError(
                f"num_workers={num_workers} exceeds this rank's {len(dataset.streams)} data streams; "
                "raise num_streams or lower num_workers"
            )
        self.parts = max(1, num_workers)
        self.positions = dataset.positions.clone()
        self.stats: Counter = Counter()
        self.pad = dataset.collator.tokenizer.pad_token_id or 0
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            # Own generator: creating the iterator must not draw from the global torch RNG.
            generator=torch.Generator().manual_seed(dataset.seed),
        )

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        items = iter(self.loader)
        while True:
            parts = [next(items) for _ in range(self.parts)]
            for _, rows, delta in parts:
                self.positions[rows[:, 0]] = rows[:, 1:]
                self.stats.update(delta)
            yield concat_batches([batch for batch, _, _ in parts], self.pad)
