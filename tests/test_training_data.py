import io
import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cloc_mllm.data.collate import CLOCCollator
from cloc_mllm.data.shards import expand_urls
from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.training.data import (
    MicroBatches,
    SampleStream,
    StreamDataset,
    concat_batches,
    epoch_shards,
    rank_streams,
    shuffled,
)

from .pretrain_utils import tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def urls(world):
    return expand_urls(str(world / "shards" / "train"))


def _dataset(world, urls, streams, positions=None, per_stream=2, num_streams=2):
    collator = CLOCCollator(load_tokenizer(world / "tokenizer"), ImageTransform.from_size(32), max_length=32)
    positions = torch.zeros(num_streams, 2, dtype=torch.long) if positions is None else positions
    return StreamDataset(urls, streams, num_streams, positions, per_stream, collator, 0, 4, False)


def _keys(stream, n):
    it = iter(stream)
    return [next(it).key for _ in range(n)]


def test_each_epoch_splits_all_shards_between_streams():
    urls = [f"s{i}.tar" for i in range(7)]
    for epoch in range(3):
        parts = [epoch_shards(urls, s, 3, epoch, seed=0, resample=False) for s in range(3)]
        assert sorted(sum(parts, [])) == sorted(urls)
    assert epoch_shards(urls, 0, 3, 0, 0, False) != epoch_shards(urls, 0, 3, 1, 0, False)
    drawn = epoch_shards(urls, 1, 3, 5, seed=0, resample=True)
    assert len(drawn) == 3 and set(drawn) <= set(urls)
    assert drawn == epoch_shards(urls, 1, 3, 5, seed=0, resample=True)


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(50))
    a = list(shuffled(iter(items), 8, np.random.default_rng(1)))
    b = list(shuffled(iter(items), 8, np.random.default_rng(1)))
    assert a == b and sorted(a) == items and a != items
    assert list(shuffled(iter(items), 1, np.random.default_rng(1))) == items


def test_stream_resumes_exactly_across_epochs(urls):
    # Stream 0 of 2 holds 4 shards x 4 = 16 samples per epoch; stop inside the second epoch.
    stream = SampleStream(urls, 0, 2, seed=0, buffer_size=5, resample=False)
    it = iter(stream)
    first = [next(it).key for _ in range(21)]
    saved = (stream.epoch, stream.position)
    expected = [next(it).key for _ in range(6)]
    assert saved == (1, 5)
    assert sorted(first[:16]) == sorted(set(first[:16]))  # an epoch has no repeats
    resumed = SampleStream(
        urls, 0, 2, seed=0, buffer_size=5, resample=False, epoch=saved[0], position=saved[1]
    )
    assert _keys(resumed, 6) == expected


def test_global_batch_is_the_same_for_any_ranks_and_workers(world, urls):
    one_rank = MicroBatches(_dataset(world, urls, [0, 1]), num_workers=0)
    with_workers = MicroBatches(_dataset(world, urls, [0, 1]), num_workers=2)
    rank0 = MicroBatches(_dataset(world, urls, rank_streams(2, 0, 2)), num_workers=0)
    rank1 = MicroBatches(_dataset(world, urls, rank_streams(2, 1, 2)), num_workers=0)
    for a, b, r0, r1 in zip(one_rank, with_workers, rank0, rank1):
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["region_boxes"], b["region_boxes"])
        joined = concat_batches([r0, r1], pad_token_id=0)
        assert torch.equal(a["pixel_values"], joined["pixel_values"])
        assert torch.equal(a["region_mask"], joined["region_mask"])
        break
    assert one_rank.positions.tolist() == with_workers.positions.tolist() == [[0, 2], [0, 2]]
    assert with_workers.stats["images"] == 4  # counters come back from the worker processes


def test_concat_pads_token_tensors():
    a = {
        "input_ids": torch.ones(1, 3, dtype=torch.long),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
    }
    b = {
        "input_ids": torch.ones(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    out = concat_batches([a, b], pad_token_id=9)
    assert out["input_ids"].shape == (3, 5)
    assert out["input_ids"][0].tolist() == [1, 1, 1, 9, 9] and out["attention_mask"][0].tolist() == [
        1,
        1,
        1,
        0,
        0,
    ]


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_corrupt_members_are_skipped_counted_and_logged(tmp_path, caplog):
    meta = json.dumps({"caption": "a red square", "width": 16, "height": 16, "regions": []}).encode()
    path = tmp_path / "000000.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good", "jpg": _jpeg(), "json": meta})
        sink.write({"__key__": "broken_image", "jpg": b"\xff\xd8 not a jpeg", "json": meta})
        sink.write({"__key__": "broken_json", "jpg": _jpeg(), "json": b"{oops"})
    truncated = tmp_path / "000001.tar"
    truncated.write_bytes(path.read_bytes()[:700])
    stats = Counter()
    stream = SampleStream(
        [str(path), str(truncated)], 0, 1, seed=0, buffer_size=0, resample=False, stats=stats
    )
    with caplog.at_level(logging.WARNING):
        it = iter(stream)
        keys = [next(it).key for _ in range(2)]
    assert keys == ["good", "good"]  # the second epoch starts over; nothing bad ever comes out
    assert stats["images_undecodable"] >= 1 and stats["json_invalid"] >= 1 and stats["shard_errors"] >= 1
    assert "broken_image" in caplog.text and "broken_json" in caplog.text


def test_urls_go_through_webdataset_openers(urls):
    # Any url webdataset can open works ("pipe:", "http(s)://", ...), not only local paths.
    stream = SampleStream([f"pipe:cat {urls[0]}"], 0, 1, seed=0, buffer_size=0, resample=False)
    assert len(_keys(stream, 4)) == 4


def test_an_epoch_without_any_sample_is_an_error(tmp_path):
    missing = SampleStream([str(tmp_path / "nope.tar")], 0, 1, seed=0, buffer_size=0, resample=False)
    with pytest.raises(RuntimeError, match="read no samples"):
        next(iter(missing))
