import json

import numpy as np
import pytest
from PIL import Image

from experiments.llava_prompt_order.run import move_image_after_question, prefix_answers
from experiments.llava_prompt_order.transpose_run import transposed_run
from experiments.llava_prompt_order.wrong_x1 import with_wrong_x1


def test_the_image_moves_after_the_first_question_only():
    records = [{"id": "r", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the red circle?"}, {"from": "gpt", "value": "[1, 2, 3, 4]"},
        {"from": "human", "value": "Where is the blue square?"}, {"from": "gpt", "value": "[5, 6, 7, 8]"},
    ]}]  # fmt: skip
    turns = move_image_after_question(records)[0]["conversations"]
    assert turns[0]["value"] == "Where is the red circle?\n<image>"
    assert turns[2]["value"] == "Where is the blue square?"


def test_answers_get_the_prefix_and_keep_their_box():
    records = [{"id": "r", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the red circle?"}, {"from": "gpt", "value": "[1, 2, 3, 4]"},
    ]}]  # fmt: skip
    assert prefix_answers(records, "It is at ")[0]["conversations"][1]["value"] == "It is at [1, 2, 3, 4]"


def test_wrong_x1_changes_the_hundreds_digit_and_keeps_a_valid_box():
    boxes = [(120, 5, 900, 40), (510, 6, 700, 50), (830, 7, 990, 60), (20, 8, 90, 70)]
    records = [
        {"id": str(i), "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": str(list(b))}]}
        for i, b in enumerate(boxes)
    ]
    for box, record in zip(boxes, with_wrong_x1(records), strict=True):
        x1, y1, x2, y2 = json.loads(record["conversations"][1]["value"])
        assert (y1, x2, y2) == box[1:] and x1 < x2
        # the last box ends in the first tenth: no other x1 fits left of it, so it keeps its own
        assert (x1 // 100 != box[0] // 100) or box[2] < 100


def test_the_transposed_run_transposes_images_and_keeps_annotations(tmp_path):
    run = tmp_path / "run"
    images = run / "world" / "refer" / "images" / "coco"
    images.mkdir(parents=True)
    (run / "world" / "refer" / "refcoco").mkdir()
    (run / "world" / "refer" / "refcoco" / "instances.json").write_text('{"boxes": [[1, 2, 3, 4]]}')
    (run / "world" / "tokenizer").mkdir()
    for name in ("pretrain", "finetune"):
        (run / name).mkdir()
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[2:5, 10:14] = 255  # a white block near the top right
    Image.fromarray(pixels).save(images / "a.png")
    transposed_run(run, tmp_path / "t")
    out = np.asarray(Image.open(tmp_path / "t" / "world" / "refer" / "images" / "coco" / "a.png"))
    assert (out == pixels.transpose(1, 0, 2)).all()  # now near the bottom left
    assert (tmp_path / "t" / "world" / "refer" / "refcoco" / "instances.json").read_text() == '{"boxes": [[1, 2, 3, 4]]}'
    assert (tmp_path / "t" / "pretrain").resolve() == (run / "pretrain").resolve()
    assert (tmp_path / "t" / "world" / "tokenizer").is_symlink()
    assert not (tmp_path / "t" / "world" / "refer" / "images.partial").exists()

    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(images / "b.png")
    with pytest.raises(ValueError, match="b.png.*not square"):
        transposed_run(run, tmp_path / "t2")
    assert not (tmp_path / "t2" / "world" / "refer" / "images").exists()  # no half-written folder taken as done


def test_pooled_objects_weighs_splits_by_items_and_hits():
    from experiments.llava_prompt_order.run import pooled_objects

    def split(items, hit, referred, random_object):
        return {"objects": {"items": items, "hit": hit, "referred_of_hits": referred},
                "reference": {"random_object_acc@0.5": random_object}}  # fmt: skip

    # 100 items with 10 hits (9 referred) and 300 items with 30 hits (3 referred): 40 hits of 400, 12 referred
    hit, referred, random_object = pooled_objects({"a": split(100, 0.1, 0.9, 0.2), "b": split(300, 0.1, 0.1, 0.4)})
    assert hit == pytest.approx(0.1) and referred == pytest.approx(12 / 40) and random_object == pytest.approx(0.35)
    assert pooled_objects({"a": split(50, 0.0, None, 0.3)})[1] is None  # no hit: no referred share


def test_grounding_data_points_first_and_can_take_the_main_jobs_turns(tmp_path):
    from cloc_mllm.mllm.pointing import check_pointers
    from experiments.llava_prompt_order.run import grounding_data
    from tests.eval_helpers import make_world

    world = make_world(tmp_path / "world")
    single = grounding_data(world, "question_first", 0, tmp_path / "single.json", point_grid=8)
    records = json.loads((tmp_path / "single.json").read_text())
    assert single == len(records) and all(len(r["conversations"]) == 2 for r in records)
    for record in records:
        question, answer = (t["value"] for t in record["conversations"])
        assert question.endswith("\n<image>") and answer.startswith("<cell_")
        check_pointers(answer, 8)
    grouped = grounding_data(world, "image_first", 0, tmp_path / "main.json", point_grid=8,
                             kinds=("grounding", "referring"), turns_per_record=3)  # fmt: skip
    turns = [t["value"] for r in json.loads((tmp_path / "main.json").read_text()) for t in r["conversations"]]
    assert grouped < single and len(turns) == 2 * single  # the same facts, three to a record
    assert any(t.startswith("<cell_") for t in turns[1::2]) and not all(t.startswith("<cell_") for t in turns[1::2])
