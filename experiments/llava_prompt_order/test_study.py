import json

from experiments.llava_prompt_order.run import move_image_after_question, prefix_answers
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
