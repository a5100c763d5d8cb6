import json
import math

from PIL import Image

from cloc_mllm.eval import report
from cloc_mllm.eval.benchmarks import GroundingItem

RESULTS = {
    "model": {"path": "m", "kind": "mllm", "fingerprint": "ab" * 32, "region_head": None},
    "data": {"root": "d"},
    "finished": "now",
    "timing": {"total_seconds": 1.5},
    "environment": {"world_size": 2},
    "grounding_source": "MLLM answers",
    "grounding": {
        "refcoco_val": {
            "any": {
                "acc@0.5": 0.8421,
                "recall@1": 0.8421,
                "recall@5": 0.9,
                "recall@10": 0.95,
                "mean_iou": 0.7,
                "n": 10,
            },
            "counts": {"status_unparseable": 3, "status_missing_image": 1},
            "localisation": {"centre_error": 0.05, "centre_error_blind": 0.2, "answered": 6},
            "objects": {"hit": 0.9, "referred_of_hits": 0.9357, "items": 10},
        },
        "flickr30k_test": {
            "any": {"acc@0.5": 0.5, "mean_iou": 0.4, "n": 4},
            "first": {"acc@0.5": 0.25, "mean_iou": 0.3, "n": 4},
            "merged": {"acc@0.5": 0.75, "mean_iou": 0.5, "n": 4},
            "counts": {},
        },
    },
    "referring": {"refcoco_val": {"exact": 0.1, "noun": 0.6, "token_f1": 0.5, "cider": None, "n": 7}},
    "encoder": {
        "region_recognition": {"mAcc": 0.711, "acc": 0.75, "n": 20, "head": "prompter"},
        "image_text_retrieval": {"i2t_R@1": 0.5, "t2i_R@1": 0.25, "n_images": 4},
        "patch_probe": {
            "layers": {"-2": {"object_class_acc": 0.3, "all_class_acc": 0.8, "position_acc": 0.6}},
            "classes": 43,
            "grid_cells": 64,
            "object_patch_fraction": 0.25,
            "test_patches": 128,
        },
    },
    "unavailable": {"zero_shot_classification": "no image folder"},
}


def test_markdown_tables_in_percent():
    md = report.results_markdown(RESULTS, ["grounding.png"])
    assert "| refcoco_val | 10 | 84.2 | – | – | 84.2 | 90.0 | 95.0 | 70.0 | 5.0 | 20.0 | 90.0 | 93.6 | 3 | 0 | 1 |" in md
    assert "| flickr30k_test | 4 | 50.0 | 25.0 | 75.0 |" in md
    assert "| – | – | – | – | 0 | 0 | 0 |" in md  # Flickr lists no scene objects: no landing rates
    assert "| refcoco_val | 7 | 10.0 | 60.0 | 50.0 | – |" in md
    assert "| 20 | 71.1 | 75.0 | prompter |" in md
    assert "| -2 | 30.0 | 80.0 | 60.0 |" in md  # patch probes
    assert "chance is 2.3 (class) and 1.6 (position). 25% of the 128 test patches" in md
    assert "- zero_shot_classification: no image folder" in md
    assert "![grounding.png](grounding.png)" in md


def test_json_is_strict_and_atomic(tmp_path):
    report.write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # no temp file left behind


def test_bar_charts_are_written(tmp_path):
    report.plot_bars(report.grounding_bars(RESULTS["grounding"]), "t", tmp_path / "g.png")
    many = {f"metric {i}": {"A": i / 30, "B": 1 - i / 30} for i in range(30)}  # drawn horizontally
    report.plot_bars(many, "many", tmp_path / "h.png")
    report.plot_bars(report.encoder_bars(RESULTS["encoder"]), "e", tmp_path / "e.png")
    report.plot_bars({"only B": {"A": None, "B": 0.5}}, "gaps", tmp_path / "gaps.png")  # None: no bar
    for name in ("g.png", "h.png", "e.png", "gaps.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 200
    with Image.open(tmp_path / "h.png") as im:
        assert im.height > im.width  # horizontal layout for many groups
    bars = report.encoder_bars(RESULTS["encoder"])
    assert bars["patch class (layer -2)"] == {"score": 0.3} and bars["patch position (layer -2)"] == {"score": 0.6}
    assert report.grounding_bars(RESULTS["grounding"])["flickr30k_test"] == {
        "Acc@0.5 (any box)": 0.5,
        "first box": 0.25,
        "merged box": 0.75,
    }


def test_gallery_is_worst_first(tmp_path):
    Image.new("RGB", (100, 50), "white").save(tmp_path / "img.jpg")
    items = [
        GroundingItem("good", str(tmp_path / "img.jpg"), "the good one", ((0, 0, 50, 50),), 100, 50),
        GroundingItem("bad", str(tmp_path / "img.jpg"), "the bad one", ((0, 0, 50, 50),), 100, 50),
        GroundingItem("gone", str(tmp_path / "nope.jpg"), "missing", ((0, 0, 50, 50),), 100, 50),
        GroundingItem("blank", str(tmp_path / "img.jpg"), "no answer", ((0, 0, 50, 50),), 100, 50),
    ]
    rows = {
        "good": {
            "status": "ok",
            "boxes": [[0.0, 0.0, 0.5, 1.0]],
            "image_size": [100, 50],
            "answer": "ok\x06",
        },
        "bad": {"status": "ok", "boxes": [[0.0, 0.0, 0.25, 1.0]], "image_size": [100, 50]},
        "gone": {"status": "missing_image", "boxes": [], "image_size": [100, 50]},
        "blank": {"status": "unparseable", "boxes": [], "image_size": [100, 50]},
    }
    order = report.worst_first(items, rows, n=10)
    assert [(item.key, round(iou, 3)) for item, iou in order] == [("blank", 0.0), ("bad", 0.5), ("good", 1.0)]
    assert report.plot_gallery(items, rows, tmp_path / "gallery.png", "test", n=3)
    with Image.open(tmp_path / "gallery.png") as im:
        assert im.width > 300
    assert not report.plot_gallery(items[2:3], rows, tmp_path / "none.png", "test")
    assert not (tmp_path / "none.png").exists()
    assert math.isclose(order[1][1], 0.5)
