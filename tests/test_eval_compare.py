import json

import pytest

from cloc_mllm.eval.compare import comparison_markdown, headline_metrics, load_runs


def results(acc, mAcc=None):
    r = {
        "model": {"path": "p", "kind": "cloc"},
        "grounding": {
            "refcoco_val": {"any": {"acc@0.5": acc}},
            "flickr30k_test": {"any": {"acc@0.5": acc / 2}, "merged": {"acc@0.5": acc / 4}},
        },
        "referring": {"refcoco_val": {"noun": 0.5, "exact": 0.25, "cider": None}},
    }
    if mAcc is not None:
        r["encoder"] = {
            "region_recognition": {"mAcc": mAcc, "acc": 0.9},
            "patch_probe": {"layers": {"-2": {"object_class_acc": 0.3, "all_class_acc": 0.8, "position_acc": 0.6}}},
        }
    return r


def test_headline_metrics_flatten():
    flat = headline_metrics(results(0.8, mAcc=0.7))
    assert flat == {
        "grounding/refcoco_val/Acc@0.5": 0.8,
        "grounding/flickr30k_test/Acc@0.5": 0.4,
        "grounding/flickr30k_test/Acc@0.5 merged": 0.2,
        "referring/refcoco_val/noun": 0.5,
        "referring/refcoco_val/exact": 0.25,
        "region_recognition/mAcc": 0.7,
        "region_recognition/acc": 0.9,
        "patch_probe/layer -2/object class": 0.3,
        "patch_probe/layer -2/position": 0.6,
    }


def test_markdown_lines_up_runs_with_missing_metrics(tmp_path):
    for name, r in (("clip", results(0.807)), ("cloc", results(0.842, mAcc=0.711))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    runs = load_runs([tmp_path / "clip", tmp_path / "cloc"])
    md = comparison_markdown(runs)
    assert "| grounding/refcoco_val/Acc@0.5 | 80.7 | 84.2 | +3.5 |" in md
    assert "| region_recognition/mAcc | – | 71.1 | – |" in md
    assert [label for label, _ in load_runs([tmp_path / "clip", tmp_path / "clip"])] == ["clip", "clip'"]
    with pytest.raises(FileNotFoundError, match="results.json"):
        load_runs([tmp_path / "nothing"])
