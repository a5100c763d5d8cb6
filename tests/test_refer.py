import json
import logging
import os
import pickle
from collections import Counter

import pytest

from cloc_mllm.data.refer import UnsafePickleError, load_plain_pickle, load_refer


def _sentences(*texts):
    return [{"sent": t, "raw": t.upper(), "tokens": t.split(), "sent_id": i} for i, t in enumerate(texts)]


def write_refer(root, dataset="refcoco", split_by="unc", refs=None, protocol=2):
    """A tiny refer layout: 2 images, 4 annotations (one zero-area), refs over val/testA."""
    (root / dataset).mkdir(parents=True, exist_ok=True)
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 1},
            {"id": 11, "image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 2},
            {"id": 12, "image_id": 2, "bbox": [5, 5, 0, 10], "category_id": 1},  # zero width
            {"id": 13, "image_id": 99, "bbox": [1, 1, 2, 2], "category_id": 1},  # unknown image
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    (root / dataset / "instances.json").write_text(json.dumps(instances))
    if refs is None:
        refs = [
            {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
             "file_name": "COCO_train2014_000000000001_10.jpg", "sentences": _sentences("man left", "guy")},
            {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 2,
             "file_name": "COCO_train2014_000000000001_11.jpg", "sentences": _sentences("small dog")},
            {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "val", "category_id": 1,
             "file_name": "x.jpg", "sentences": _sentences("thin")},
            {"ref_id": 3, "ann_id": 13, "image_id": 99, "split": "val", "category_id": 1,
             "file_name": "x.jpg", "sentences": _sentences("lost")},
            {"ref_id": 4, "ann_id": 77, "image_id": 1, "split": "val", "category_id": 1,
             "file_name": "x.jpg", "sentences": _sentences("no annotation")},
            {"ref_id": 5, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
             "file_name": "x.jpg", "sentences": []},
            {"ref_id": 6, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 2,
             "file_name": "x.jpg", "sentences": _sentences("dog")},
        ]  # fmt: skip
    (root / dataset / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    return root


def test_load_refer_records_and_counted_skips(tmp_path, caplog):
    write_refer(tmp_path)
    stats = Counter()
    with caplog.at_level(logging.INFO, logger="cloc_mllm.data.refer"):
        records = load_refer(tmp_path, "refcoco", "unc", "val", stats=stats)
    assert [r.ref_id for r in records] == [0, 1]
    first = records[0]
    assert first.box == (10.0, 20.0, 40.0, 60.0)  # xywh -> xyxy pixels
    assert first.sentences == ["man left", "guy"]
    assert first.category == "person" and records[1].category == "dog"
    assert first.file_name == "COCO_train2014_000000000001.jpg"  # the real image, not the ref's name
    assert first.image_path == str(tmp_path / "images/mscoco/images/train2014" / first.file_name)
    assert (first.width, first.height, first.split, first.ann_id) == (100, 80, "val", 10)
    assert stats == Counter(zero_area_box=1, unknown_image=1, unknown_annotation=1, no_sentence=1)
    text = caplog.text
    assert "refcoco(unc) val: 2 refs, 3 sentences, 2 boxes" in text
    assert "official release has 3811 refs" in text  # a partial set is flagged against the release


def test_load_refer_image_dir_and_splits(tmp_path):
    write_refer(tmp_path, dataset="refcocog", split_by="umd")
    records = load_refer(tmp_path, "refcocog", "umd", "testA", image_dir=tmp_path / "imgs")
    assert [r.ref_id for r in records] == [6]
    assert records[0].image_path == str(tmp_path / "imgs" / "COCO_train2014_000000000001.jpg")
    with pytest.raises(ValueError, match=r"no split 'test'.*\['testA', 'val'\]"):
        load_refer(tmp_path, "refcocog", "umd", "test")
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p"):
        load_refer(tmp_path, "refcocog", "unc", "val")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])  # GLOBAL (0, 2) and STACK_GLOBAL (4) + REDUCE
def test_refs_pickle_calling_os_system_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    write_refer(tmp_path, refs=[{"ref_id": 0, "split": "val", "x": _Exploit(marker)}], protocol=protocol)
    path = tmp_path / "refcoco" / "refs(unc).p"
    with pytest.raises(UnsafePickleError) as err:
        load_refer(tmp_path)
    assert str(path) in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_plain_pickle_rejects_other_globals_and_garbage(tmp_path):
    class_pickle = tmp_path / "class.p"
    class_pickle.write_bytes(pickle.dumps(Counter(a=1)))  # a harmless class is still a class
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        load_plain_pickle(class_pickle)
    eval_pickle = tmp_path / "eval.p"
    eval_pickle.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_plain_pickle(eval_pickle)
    torn = tmp_path / "torn.p"
    torn.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(UnsafePickleError, match="torn.p"):
        load_plain_pickle(torn)
    plain = tmp_path / "plain.p"
    value = {"a": [1, 2.5, None, True, ("t", b"b")], "s": {1, 2}, "f": frozenset({3})}
    plain.write_bytes(pickle.dumps(value, protocol=4))
    assert load_plain_pickle(plain) == value
