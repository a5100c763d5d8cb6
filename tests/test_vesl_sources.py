"""VESL inputs: tars, folders, COCO and LLaVA json, split into work units; bad records flagged."""

import io
import json

import pytest
import webdataset as wds
from PIL import Image

from cloc_mllm.vesl.sources import expand_tars, plan_units, read_unit, sanitize_key


def jpeg(colour="red", size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar(path, samples):
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)


def test_tar_units_and_records(tmp_path):
    meta = {"caption": "a red box", "regions": [{"box": [1, 2, 5, 6], "phrase": "red box", "score": 1.0}]}
    write_tar(
        tmp_path / "000.tar",
        [
            {"__key__": "a", "jpg": jpeg(), "json": json.dumps(meta).encode()},
            {"__key__": "b", "png": jpeg(), "txt": b"  from a txt  "},
            {"__key__": "c", "json": b"{}"},
            {"__key__": "d", "jpg": jpeg(), "json": b"{not json"},
            {
                "__key__": "e",
                "jpg": jpeg(),
                "json": json.dumps({"regions": [{"box": [1, 2, 3, 4]}]}).encode(),
            },
        ],
    )
    write_tar(tmp_path / "001.tar", [{"__key__": "z", "jpg": jpeg(), "txt": b"z"}])
    units = plan_units(str(tmp_path / "{000..001}.tar"))
    assert [(u.name, u.is_tar) for u in units] == [("000000", True), ("000001", True)]
    records = list(read_unit(units[0]))
    assert [(r.key, r.caption, r.error) for r in records] == [
        ("a", "a red box", None),
        ("b", "from a txt", None),
        ("c", "", "missing_image"),
        ("d", "", "bad_json"),
        ("e", "", "bad_json"),  # a region without a phrase
    ]
    assert records[0].ground_truth == [{"box": [1, 2, 5, 6], "phrase": "red box"}]
    assert records[0].source == "tar:000.tar" and records[1].ground_truth is None
    assert records[0].data == jpeg()


def test_missing_and_broken_tars_are_named(tmp_path):
    write_tar(tmp_path / "001.tar", [{"__key__": "z", "jpg": jpeg()}])
    with pytest.raises(FileNotFoundError, match=r"002\.tar' does not exist \(1 missing\)"):
        expand_tars(str(tmp_path / "{001..002}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_tars(str(tmp_path / "*.tgz"))
    (tmp_path / "bad.tar").write_bytes(b"this is not a tar archive" * 40)
    (unit,) = plan_units(str(tmp_path / "bad.tar"))
    with pytest.raises(RuntimeError, match="cannot read input tar .*bad.tar"):
        list(read_unit(unit))


def test_folder_input_with_sidecar_captions_and_chunks(tmp_path):
    (tmp_path / "sub.dir").mkdir()
    for name in ("b.jpg", "a.png", "sub.dir/c.jpeg"):
        (tmp_path / name).write_bytes(jpeg())
    (tmp_path / "a.txt").write_text("caption of a\n")
    (tmp_path / "notes.md").write_text("not an image")
    units = plan_units(str(tmp_path), shard_size=2)
    assert [[item.key for item in u.items] for u in units] == [["a", "b"], ["sub_dir_c"]]
    records = [r for u in units for r in read_unit(u)]
    assert [(r.caption, r.source, r.error) for r in records] == [
        ("caption of a", "folder:a", None),
        ("", "folder:b", None),
        ("", "folder:sub.dir/c", None),
    ]


def test_coco_json_keeps_every_image_with_captions_and_boxes(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(jpeg())
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "categories": [{"id": 7, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"image_id": 1, "caption": "a dog"},
            {"image_id": 1, "caption": "another caption"},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (unit,) = plan_units(str(tmp_path / "coco.json"), image_root=str(tmp_path / "img"))
    one, two = read_unit(unit)
    assert (one.key, one.caption, one.error) == ("1", "a dog", None)
    assert one.ground_truth == [{"box": [10.0, 20.0, 40.0, 60.0], "phrase": "dog"}]  # crowd box left out
    assert (two.key, two.error, two.ground_truth) == ("2", "missing_image", [])


def test_llava_json_takes_the_first_answer_as_caption(tmp_path):
    (tmp_path / "im.jpg").write_bytes(jpeg())
    records = [
        {"id": "x/1", "image": "im.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a red square"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "hi"}]},
    ]  # fmt: skip
    (tmp_path / "llava.json").write_text(json.dumps(records))
    first, second = read_unit(plan_units(str(tmp_path / "llava.json"))[0])
    assert (first.key, first.caption, first.error, first.ground_truth) == ("x_1", "a red square", None, None)
    assert (second.key, second.error) == ("2", "missing_image")
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "im.jpg"}]))
    with pytest.raises(ValueError, match="record 0 is not a LLaVA conversation"):
        plan_units(str(tmp_path / "bad.json"))


def test_sanitize_key():
    assert sanitize_key("a/b.c d-e_f") == "a_b_c_d-e_f"
