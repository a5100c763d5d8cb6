import json
from collections import Counter

from cloc_mllm.data.mdetr import load_mdetr_refexp


def test_mdetr_refexp_one_record_per_expression(tmp_path):
    data = {
        "images": [
            {"id": 0, "file_name": "COCO_train2014_1.jpg", "width": 100, "height": 50, "caption": "left man",
             "original_img_id": 1},
            {"id": 1, "file_name": "COCO_train2014_1.jpg", "width": 100, "height": 50, "caption": "the man",
             "original_id": 1},
            {"id": 2, "file_name": "COCO_train2014_2.jpg", "caption": "no box"},
            {"id": 3, "file_name": "COCO_train2014_2.jpg", "caption": "flat"},
            {"id": 4, "file_name": "COCO_train2014_2.jpg", "caption": " "},
        ],
        "annotations": [
            {"id": 5, "image_id": 0, "bbox": [10, 5, 20, 30], "category_id": 1, "original_id": 99},
            {"id": 6, "image_id": 1, "bbox": [10, 5, 20, 30], "category_id": 1},
            {"id": 7, "image_id": 3, "bbox": [10, 5, 0, 30], "category_id": 1},
            {"id": 8, "image_id": 4, "bbox": [10, 5, 2, 3], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    path = tmp_path / "final_refcoco_val.json"
    path.write_text(json.dumps(data))
    stats = Counter()
    records = load_mdetr_refexp(path, tmp_path / "train2014", stats=stats)
    assert [(r.ref_id, r.image_id, r.sentences, r.ann_id) for r in records] == [
        (0, 1, ["left man"], 99),
        (1, 1, ["the man"], 6),
    ]
    assert records[0].box == (10.0, 5.0, 30.0, 35.0) and records[0].category == "person"
    assert records[0].image_path == str(tmp_path / "train2014" / "COCO_train2014_1.jpg")
    assert records[0].split == "final_refcoco_val"
    assert stats == Counter(no_box=1, zero_area_box=1, no_sentence=1)
