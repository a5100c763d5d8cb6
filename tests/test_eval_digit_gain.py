import pytest
import torch

from cloc_mllm.box_text import format_box
from cloc_mllm.eval.benchmarks import load_grounding_benchmarks
from cloc_mllm.eval.digit_gain import digit_names, grounding_answer_records, image_digit_gain
from cloc_mllm.mllm.inference import load_mllm
from tests.eval_helpers import make_world, save_tiny_llava


def test_digit_names_follow_the_box_text_token_by_token():
    # SmolLM2 writes one token per digit; a short coordinate is named from its units digit backwards
    tokens = [*"[571, 85, 604, 5]", "<|im_end|>"]
    names = digit_names(tokens)
    assert names[1:4] == ["x1 hundreds", "x1 tens", "x1 units"]
    assert names[6:8] == ["y1 tens", "y1 units"]
    assert names[10:13] == ["x2 hundreds", "x2 tens", "x2 units"]
    assert names[15] == "y2 units"
    assert [n for n, t in zip(names, tokens, strict=True) if not t.strip().isdigit()] == [None] * 9


def test_merged_digit_tokens_are_named_by_their_highest_place():
    tokens = ["[", "571", ",", " 8", "5", ",", " 60", "4", ",", " 5", "]"]
    assert [n for n in digit_names(tokens) if n] == [
        "x1 hundreds", "y1 tens", "y1 units", "x2 hundreds", "x2 units", "y2 units"
    ]  # fmt: skip


def test_digits_after_the_fourth_coordinate_are_not_named():
    tokens = [*"[1,2,3,4], [9"]
    assert digit_names(tokens)[-1] is None


@pytest.fixture(scope="module")
def grounding(tmp_path_factory):
    root = tmp_path_factory.mktemp("digit_gain")
    world = make_world(root / "world")
    benchmarks, _ = load_grounding_benchmarks(world / "refer", None, ["refcoco_val", "refcocog_val"])
    return benchmarks, save_tiny_llava(world, root / "llava")


def test_records_ask_the_evaluation_question_and_answer_the_true_box(grounding):
    benchmarks, _ = grounding
    records = grounding_answer_records(benchmarks, "Where is {}?", limit=1000)
    assert len(records) == sum(len(b.items) for b in benchmarks)
    items = {f"{b.name}-{i.key}": i for b in benchmarks for i in b.items}
    item = items[records[0]["id"]]
    x1, y1, x2, y2 = item.boxes[0]
    w, h = item.width, item.height
    assert records[0]["conversations"][1]["value"] == format_box((x1 / w, y1 / h, x2 / w, y2 / h))
    assert records[0]["conversations"][0]["value"].startswith("<image>\nWhere is ")
    assert len(grounding_answer_records(benchmarks, "Where is {}?", limit=3)) == 3


def test_the_gain_is_what_the_image_changes(grounding):
    benchmarks, path = grounding
    model, processor = load_mllm(path, device="cpu")
    seeing = image_digit_gain(model, processor, benchmarks, limit=12, batch_size=6)
    assert seeing["records"] == 12 and seeing["digits"]
    assert all(row["tokens"] > 0 for row in seeing["digits"].values())
    assert any(abs(g) > 1e-4 for g in seeing["gain"].values())  # a random projector passes the image on
    with torch.no_grad():  # a blind LLaVA: every image gives the same tokens
        for param in model.model.multi_modal_projector.parameters():
            param.zero_()
    blind = image_digit_gain(model, processor, benchmarks, limit=12, batch_size=6)
    assert all(abs(g) < 1e-5 for g in blind["gain"].values())
    assert blind["image_token_norm"] == 0
