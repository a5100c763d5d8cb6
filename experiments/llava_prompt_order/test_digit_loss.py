from experiments.llava_prompt_order.digit_loss import digit_names
from experiments.llava_prompt_order.run import move_image_after_question


def test_digit_names_follow_the_box_text_token_by_token():
    # SmolLM2 writes one token per digit; a short coordinate is named from its units digit backwards
    tokens = [*"[571, 85, 604, 5]", "<|im_end|>"]
    names = digit_names(tokens)
    assert names[1:4] == ["x1 hundreds", "x1 tens", "x1 units"]
    assert names[6:8] == ["y1 tens", "y1 units"]
    assert names[10:13] == ["x2 hundreds", "x2 tens", "x2 units"]
    assert names[15] == "y2 units"
    assert [n for n, t in zip(names, tokens, strict=True) if not t.strip().isdigit()] == [None] * 9


def test_digits_after_the_fourth_coordinate_are_not_named():
    tokens = [*"[1,2,3,4], [9"]
    assert digit_names(tokens)[-1] is None


def test_the_image_moves_after_the_first_question_only():
    records = [{"id": "r", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the red circle?"}, {"from": "gpt", "value": "[1, 2, 3, 4]"},
        {"from": "human", "value": "Where is the blue square?"}, {"from": "gpt", "value": "[5, 6, 7, 8]"},
    ]}]  # fmt: skip
    turns = move_image_after_question(records)[0]["conversations"]
    assert turns[0]["value"] == "Where is the red circle?\n<image>"
    assert turns[2]["value"] == "Where is the blue square?"
