from collections import Counter

import pytest

from cloc_mllm.data.synthetic import iter_split
from cloc_mllm.data.synthetic_text import Mention
from cloc_mllm.eval.benchmarks import (
    GROUNDING_SPLITS,
    GroundingBenchmark,
    GroundingItem,
    load_grounding_benchmarks,
    region_targets,
    score_benchmark,
)
from tests.eval_helpers import WORLD, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def expected_counts():
    """Items per benchmark computed from the generator itself, not from the written files."""
    counts = Counter()
    for split in ("val", "test"):
        for sample in iter_split(WORLD, split):
            for name, (family, dataset, split_by, bench_split) in GROUNDING_SPLITS.items():
                if family == "flickr":
                    if bench_split == split:
                        counts[name] += sum(
                            isinstance(seg, Mention) and bool(seg.objects)
                            for sentence in sample.flickr_sentences
                            for seg in sentence
                        )
                    continue
                # refer "unc" splits the test images into testA (even ids) and testB (odd ids)
                ref_split = split
                if split == "test" and split_by == "unc":
                    ref_split = "testA" if sample.image_id % 2 == 0 else "testB"
                if ref_split == bench_split:
                    counts[name] += sum(len(sentences) for _, sentences in sample.refs[dataset])
    return counts


def test_loader_counts_match_the_generator(world):
    benchmarks, unavailable = load_grounding_benchmarks(world / "refer", world / "flickr30k_entities")
    assert unavailable == {}
    assert [b.name for b in benchmarks] == list(GROUNDING_SPLITS)
    got = {b.name: len(b.items) for b in benchmarks}
    assert got == dict(expected_counts())
    assert all(got.values())
    flickr = benchmarks[-1]
    assert flickr.protocols == ("any", "first", "merged")
    assert flickr.skipped["phrase_scene"] > 0  # the background phrase of every caption has no box
    flickr_items = benchmarks[-1].items + benchmarks[-2].items
    assert any(len(item.boxes) > 1 for item in flickr_items)  # grouped mentions: several boxes


def test_refer_items_carry_their_scene_and_the_random_object_references(world):
    (bench,), _ = load_grounding_benchmarks(world / "refer", None, ["refcoco_val"])
    for item in bench.items:
        assert tuple(item.boxes[0]) in [box for box, _ in item.objects]  # the referred object is in its scene
        assert item.noun in [name for _, name in item.objects]
    perfect = {i.key: {"status": "ok", "boxes": [[0.0, 0.0, 1.0, 1.0]], "image_size": [i.width, i.height]} for i in bench.items}
    reference = score_benchmark(bench, perfect)["reference"]
    # a random object of the named class can only beat a random object of any class
    assert 0 < reference["random_object_acc@0.5"] <= reference["random_same_class_acc@0.5"] <= 1
    scenes = [len(i.objects) for i in bench.items]
    assert reference["random_object_acc@0.5"] >= sum(1 / n for n in scenes) / len(scenes)  # the target itself
    # answering the referred box itself: always on an object, always the referred one
    truth = {i.key: {"status": "ok", "boxes": [[b / s for b, s in zip(i.boxes[0], (i.width, i.height) * 2)]],
                     "image_size": [i.width, i.height]} for i in bench.items}  # fmt: skip
    objects = score_benchmark(bench, truth)["objects"]
    assert objects == {"hit": 1.0, "referred_of_hits": 1.0, "items": len(bench.items)}


def test_missing_data_is_reported_not_raised(world, tmp_path):
    benchmarks, unavailable = load_grounding_benchmarks(
        world / "refer", tmp_path / "nowhere", ["refcoco_val", "flickr30k_test"], limit=3
    )
    assert [len(b.items) for b in benchmarks] == [3]
    assert "flickr30k_test" in unavailable and "nowhere" in unavailable["flickr30k_test"]
    with pytest.raises(ValueError, match="unknown benchmark 'refclef'"):
        load_grounding_benchmarks(world / "refer", None, ["refclef"])


def _item(key, boxes, target="t"):
    return GroundingItem(key, "img.jpg", "a dog", tuple(boxes), 100, 50, target=target, noun="dog")


def test_score_benchmark_statuses_and_pixels():
    bench = GroundingBenchmark(
        "b",
        [_item("hit", [(0, 0, 50, 25)]), _item("miss", [(0, 0, 50, 25)]), _item("gone", [(0, 0, 50, 25)]),
         _item("blank", [(0, 0, 50, 25)])],
        ("any",),
        Counter(zero_area_box=2),
    )  # fmt: skip
    rows = {
        "hit": {"status": "ok", "boxes": [[0.0, 0.0, 0.5, 0.5]], "image_size": [100, 50]},  # = (0,0,50,25)
        "miss": {"status": "ok", "boxes": [[0.5, 0.5, 1.0, 1.0]], "image_size": [100, 50]},
        "gone": {"status": "missing_image", "boxes": [], "image_size": [100, 50]},
        "blank": {"status": "empty_answer", "boxes": [], "image_size": [100, 50]},
    }
    result = score_benchmark(bench, rows)
    assert result["any"]["acc@0.5"] == pytest.approx(1 / 3)  # the missing image is left out, blank is a miss
    assert result["counts"] == {
        "items": 4,
        "scored": 3,
        "status_empty_answer": 1,
        "status_missing_image": 1,
        "status_ok": 2,
        "loader_skipped_zero_area_box": 2,
    }
    # centres in image units: target (.25, .25) twice; answered: hit (.25, .25), miss (.75, .75)
    assert result["localisation"] == {
        "centre_error": pytest.approx((0 + 0.5) / 2),
        "centre_error_blind": pytest.approx(0.0),
        "answered": 2,
    }


def test_region_targets_group_expressions_and_skip_multi_box():
    items = [
        _item("a0", [(0, 0, 1, 1)], "A"),
        GroundingItem("a1", "img.jpg", "the dog", ((0, 0, 1, 1),), 100, 50, target="A", noun="dog"),
        _item("b0", [(0, 0, 1, 1), (2, 2, 3, 3)], "B"),
    ]
    targets, skipped = region_targets(GroundingBenchmark("b", items, ("any",)))
    assert [(t.key, t.references) for t in targets] == [("A", ("a dog", "the dog"))]
    assert skipped == Counter(multi_box_target=1)
