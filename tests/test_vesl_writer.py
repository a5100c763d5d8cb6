"""Output shards: exact sample format, deterministic bytes, atomic rename, finished-shard detection."""

import json

import pytest

from cloc_mllm.vesl.writer import (
    ShardWriter,
    is_finished,
    iter_shard,
    read_json,
    sample_json,
    shard_paths,
    write_json_atomic,
)


def write_one(path):
    with ShardWriter(path) as writer:
        writer.write("k1", b"\xff\xd8jpeg", sample_json("a dog", 4, 3, [{"box": [0, 0, 1, 1]}], "src"))


def test_sample_json_has_the_design_fields_in_order():
    record = json.loads(sample_json("a dog", 640, 480, [], "coco:x"))
    assert list(record) == ["caption", "width", "height", "regions", "source"]


def test_shards_are_deterministic_and_readable(tmp_path):
    write_one(tmp_path / "a.tar")
    write_one(tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    ((key, jpeg, record),) = iter_shard(tmp_path / "a.tar")
    assert (key, jpeg, record["caption"], record["regions"]) == (
        "k1",
        b"\xff\xd8jpeg",
        "a dog",
        [{"box": [0, 0, 1, 1]}],
    )
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_failed_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "x.tar") as writer:
        writer.write("k1", b"data", b"{}")
        raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_finished_needs_tar_and_manifest(tmp_path):
    tar, manifest = shard_paths(tmp_path, "000003")
    assert (tar.name, manifest.name) == ("000003.tar", "000003.manifest.json")
    write_one(tar)
    assert not is_finished(tmp_path, "000003")
    write_json_atomic(manifest, {"images_in": 1})
    assert is_finished(tmp_path, "000003") and read_json(manifest) == {"images_in": 1}
