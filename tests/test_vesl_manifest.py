"""Shard statistics: counting by outcome, histograms, merging and the json round trip."""

import pytest

from cloc_mllm.vesl.manifest import ShardStats


def test_counts_histograms_and_round_trip():
    stats = ShardStats()
    stats.add_failure("undecodable")
    stats.add_written(num_phrases=2, scores=[0.15, 0.95, 1.0])
    stats.add_written(num_phrases=0, scores=[])
    stats.add_written(num_phrases=3, scores=[])
    data = stats.to_json()
    assert (data["images_in"], data["images_out"], data["regions"]) == (4, 3, 3)
    assert data["failures"] == {
        "undecodable": 1, "missing_image": 0, "bad_json": 0, "empty_caption": 0, "duplicate_key": 0
    }  # fmt: skip
    assert data["no_regions"] == {"no_phrases": 1, "no_detections": 1}
    assert data["phrases_per_image"] == {"mean": round(5 / 3, 3), "hist": {"0": 1, "2": 1, "3": 1}}
    assert data["regions_per_image"] == {"mean": 1.0, "hist": {"0": 2, "3": 1}}
    assert data["score_hist"]["counts"] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the last bin
    assert ShardStats.from_json(data).to_json() == data


def test_merge_adds_everything():
    a, b = ShardStats(), ShardStats()
    a.add_written(1, [0.5])
    b.add_written(1, [0.55, 0.2])
    b.add_failure("empty_caption")
    a.merge(b)
    data = a.to_json()
    assert (data["images_in"], data["images_out"], data["regions"]) == (3, 2, 3)
    assert data["regions_per_image"]["hist"] == {"1": 1, "2": 1}
    assert data["score_hist"]["counts"][2] == 1 and data["score_hist"]["counts"][5] == 2
    assert data["failures"]["empty_caption"] == 1


def test_unknown_failure_reason():
    with pytest.raises(ValueError, match="unknown failure reason 'lost'"):
        ShardStats().add_failure("lost")
