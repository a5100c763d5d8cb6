"""Quality of pseudo labels against ground truth: matching rule, report numbers, joining output to input."""

import io

import pytest
from PIL import Image

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.vesl.detector import Region
from cloc_mllm.vesl.phrases import build_phrase_extractor
from cloc_mllm.vesl.pipeline import Stages, VeslConfig, run_local
from cloc_mllm.vesl.quality import (
    ground_truth_by_key,
    head_key,
    match_image,
    paired_regions,
    phrase_key,
    quality_report,
    report_markdown,
)
from cloc_mllm.vesl.sources import plan_units, read_unit


def region(box, phrase, score=1.0):
    return {"box": list(box), "phrase": phrase, "score": score}


def test_phrase_keys():
    assert phrase_key("two green crosses") == phrase_key("a green cross") == "green cross"
    assert phrase_key("the Small red circles") == "small red circle"
    assert head_key("a brown dog") == head_key("dogs") == "dog"


def test_match_image_is_greedy_by_score_within_a_phrase():
    gt = [region((0, 0, 10, 10), "red circle"), region((20, 0, 30, 10), "blue square")]
    preds = [
        region((1, 0, 10, 10), "red circles", 0.5),  # IoU 0.9 with the circle: a hit, same phrase
        region((0, 0, 10, 10), "red circle", 0.9),  # higher score: it takes the circle first
        region((20, 0, 30, 10), "red circle", 0.8),  # right box, wrong phrase
        region((50, 50, 60, 60), "blue square", 0.7),  # nothing there
    ]
    assert match_image(preds, gt, phrase_key) == ([False, True, False, False], [True, False])
    assert match_image(preds, gt, lambda _: "") == ([False, True, True, False], [True, True])
    assert match_image([], gt, phrase_key) == ([], [False, False])


def test_report_numbers():
    pairs = [
        ([region((0, 0, 10, 10), "dog"), region((40, 40, 50, 50), "cat")], [region((0, 0, 10, 10), "dog")]),
        ([], [region((0, 0, 10, 10), "cat"), region((20, 20, 30, 30), "dog")]),
    ]
    report = quality_report(pairs)
    assert report["images"] == 2
    assert report["overall"] == {
        "precision": 0.5,
        "recall": round(1 / 3, 4),
        "predicted": 2,
        "ground_truth": 3,
    }
    assert report["per_phrase"]["dog"] == {"precision": 1.0, "recall": 0.5, "predicted": 1, "ground_truth": 2}
    assert report["per_phrase"]["cat"] == {"precision": 0.0, "recall": 0.0, "predicted": 1, "ground_truth": 1}
    table = report_markdown(report)
    assert "| dog | 1.000 | 0.500 | 1 | 2 |" in table and "| cat | 0.000 | 0.000 | 1 | 1 |" in table
    with pytest.raises(ValueError, match="match='word'"):
        quality_report(pairs, match="word")


def test_oracle_labels_on_the_synthetic_world_score_as_expected(tmp_path):
    cfg = SyntheticWorldConfig(num_train=6, num_val=0, num_test=0, images_per_shard=3)
    write_world(tmp_path / "world", cfg, ["shards"])
    spec = str(tmp_path / "world" / "shards" / "train" / "{000000..000001}.tar")
    truth = {}
    for unit in plan_units(spec):
        for record in read_unit(unit):
            truth[Image.open(io.BytesIO(record.data)).convert("RGB").tobytes()] = record.ground_truth

    def oracle(images, phrases):
        """Every true box with its true phrase, plus one tiny false positive per image."""
        found = []
        for image, queries in zip(images, phrases, strict=True):
            boxes = [Region(tuple(g["box"]), g["phrase"], 0.9) for g in truth[image.tobytes()]]
            found.append(boxes + [Region((0.0, 0.0, 2.0, 2.0), queries[0], 0.2)])
        return found

    config = VeslConfig(input=spec, output=str(tmp_path / "out"))
    run_local(config, stages=Stages(None, build_phrase_extractor("pattern"), oracle))
    report = quality_report(paired_regions(str(tmp_path / "out"), ground_truth_by_key(spec)))
    num_truth = sum(len(v) for v in truth.values())
    assert report["images"] == 6
    assert report["overall"]["recall"] == 1.0 and report["overall"]["ground_truth"] == num_truth
    assert report["overall"]["precision"] == round(num_truth / (num_truth + 6), 4)


def test_input_without_ground_truth_is_an_error(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "photos" / "a.txt").write_text("a black square")
    config = VeslConfig(input=str(tmp_path / "photos"), output=str(tmp_path / "out"))
    stages = Stages(None, build_phrase_extractor("pattern"), lambda images, phrases: [[] for _ in images])
    run_local(config, stages=stages)
    with pytest.raises(ValueError, match="carries no ground-truth regions"):
        ground_truth_by_key(str(tmp_path / "photos"))
