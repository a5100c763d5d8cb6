import json
import logging
from collections import Counter

import pytest

from cloc_mllm.data.coco import load_coco_captions, load_coco_detection


def write_json(path, images, annotations, categories=None):
    data = {"images": images, "annotations": annotations}
    if categories is not None:
        data["categories"] = categories
    path.write_text(json.dumps(data))
    return path


IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "b.jpg"}]


def test_detection_regions_and_counted_skips(tmp_path, caplog):
    path = write_json(
        tmp_path / "instances.json",
        IMAGES,
        [
            {"id": 1, "image_id": 1, "bbox": [1, 2, 10, 20], "category_id": 7},
            {"id": 2, "image_id": 2, "bbox": [0, 0, 5, 5], "category_id": 3},
            {"id": 3, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 3, "iscrowd": 1},
            {"id": 4, "image_id": 1, "bbox": [0, 0, 0, 5], "category_id": 3},
            {"id": 5, "image_id": 9, "bbox": [0, 0, 5, 5], "category_id": 3},
            {"id": 6, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 4},
        ],
        [{"id": 7, "name": "zebra"}, {"id": 3, "name": "cat"}],
    )
    stats = Counter()
    with caplog.at_level(logging.INFO, logger="cloc_mllm.data.coco"):
        det = load_coco_detection(path, tmp_path / "imgs", stats=stats)
    assert det.categories == ["cat", "zebra"]  # category-id order
    assert [(r.category, r.category_index, r.box) for r in det.regions] == [
        ("zebra", 1, (1.0, 2.0, 11.0, 22.0)),
        ("cat", 0, (0.0, 0.0, 5.0, 5.0)),
    ]
    assert det.regions[0].image_path == str(tmp_path / "imgs" / "a.jpg")
    assert (det.regions[0].width, det.regions[0].height) == (64, 48)
    assert stats == Counter(crowd=1, zero_area_box=1, unknown_image=1, unknown_category=1)
    assert "instances.json: 2 boxes; skipped" in caplog.text


def test_captions_grouped_per_image(tmp_path):
    path = write_json(
        tmp_path / "captions.json",
        [*IMAGES, {"id": 3, "file_name": "c.jpg"}],
        [
            {"id": 1, "image_id": 1, "caption": "a cat "},
            {"id": 2, "image_id": 1, "caption": "a small cat"},
            {"id": 3, "image_id": 2, "caption": "  "},
            {"id": 4, "image_id": 3, "caption": "a dog"},
            {"id": 5, "image_id": 5, "caption": "ghost"},
        ],
    )
    stats = Counter()
    images = load_coco_captions(path, tmp_path, stats=stats)
    assert [(i.image_id, i.captions) for i in images] == [(1, ["a cat", "a small cat"]), (3, ["a dog"])]
    assert stats == Counter(empty_caption=1, unknown_image=1, image_without_caption=1)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_captions(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="bad.json.*annotations"):
        load_coco_captions(bad, tmp_path)
    no_cats = write_json(tmp_path / "nocats.json", IMAGES, [])
    with pytest.raises(ValueError, match="nocats.json.*categories"):
        load_coco_detection(no_cats, tmp_path)
