"""The shard reader: order, resume by skipping, and bad members skipped and counted."""

import io
import json
import logging
from collections import Counter

import pytest
import webdataset as wds
from PIL import Image

from cloc_mllm.data.shards import decode_sample, expand_urls, iter_shard_samples, raw_records


def _jpeg(colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write(path, samples):
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)


def _good(key):
    meta = {"caption": key, "width": 16, "height": 12, "regions": [], "source": "t"}
    return {"__key__": key, "jpg": _jpeg(), "json": json.dumps(meta).encode()}


@pytest.fixture
def shards(tmp_path):
    broken = _jpeg()[:40]  # a truncated jpeg: the header opens, the decode fails
    _write(
        tmp_path / "000000.tar",
        [
            _good("a"),
            {"__key__": "broken", "jpg": broken, "json": b"{}"},
            _good("b"),
            {"__key__": "badjson", "jpg": _jpeg(), "json": b"{not json"},
            {"__key__": "nojson", "jpg": _jpeg()},
        ],
    )
    _write(tmp_path / "000001.tar", [_good("c"), _good("d")])
    return tmp_path


def test_reads_in_order_and_counts_every_skip(shards, caplog):
    stats = Counter()
    with caplog.at_level(logging.WARNING):
        samples = list(iter_shard_samples(str(shards / "{000000..000001}.tar"), stats=stats))
    assert [s.key for s in samples] == ["a", "b", "c", "d"]
    assert all(s.image.mode == "RGB" and s.image.size == (16, 12) for s in samples)
    assert samples[0].meta["caption"] == "a" and samples[2].url.endswith("000001.tar")
    assert stats == Counter(samples_read=4, images_undecodable=1, json_invalid=1, samples_incomplete=1)
    assert "broken" in caplog.text and "badjson" in caplog.text and "nojson" in caplog.text


def test_skip_counts_raw_samples_for_exact_resume(shards):
    urls = expand_urls(str(shards))  # a directory: its tars, sorted
    assert [u.rsplit("/", 1)[1] for u in urls] == ["000000.tar", "000001.tar"]
    stats = Counter()
    rest = [s.key for s in iter_shard_samples(urls, skip=5, stats=stats)]
    assert rest == ["c", "d"] and stats["samples_skipped_resume"] == 5
    assert [s.key for s in iter_shard_samples(urls, skip=2)] == ["b", "c", "d"]
    # The two public stages: raw records (cheap to skip or shuffle), then decoding.
    raw = list(raw_records(urls, Counter()))
    assert [r["__key__"] for r in raw] == ["a", "broken", "b", "badjson", "nojson", "c", "d"]
    assert [s.key for r in raw[::-1] if (s := decode_sample(r, Counter()))] == ["d", "c", "b", "a"]


def test_missing_and_truncated_shards_are_counted(shards):
    data = (shards / "000001.tar").read_bytes()
    (shards / "000002.tar").write_bytes(data[: len(data) // 2 + 100])
    stats = Counter()
    urls = [str(shards / "nope.tar"), str(shards / "000002.tar"), str(shards / "000000.tar")]
    keys = [s.key for s in iter_shard_samples(urls, stats=stats)]
    assert keys[-2:] == ["a", "b"]
    assert stats["shard_errors"] == 2
