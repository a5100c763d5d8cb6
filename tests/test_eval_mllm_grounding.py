from types import SimpleNamespace

import pytest

import cloc_mllm.mllm.inference as inference
from cloc_mllm.box_text import format_box
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem, load_grounding_benchmarks
from cloc_mllm.eval.mllm_grounding import GROUNDING_PROMPT, evaluate_mllm_grounding
from cloc_mllm.mllm.pointing import cell_tokens
from tests.eval_helpers import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def normalised(item):
    x1, y1, x2, y2 = item.boxes[0]
    return (x1 / item.width, y1 / item.height, x2 / item.width, y2 / item.height)


def test_answers_are_parsed_and_scored(world, tmp_path, monkeypatch):
    base = load_grounding_benchmarks(world / "refer", None, ["refcoco_val"])[0][0].items[:5]
    items = [
        GroundingItem(f"k{i}", it.image_path, f"thing {i}", it.boxes, it.width, it.height)
        for i, it in enumerate(base)
    ]
    items.append(GroundingItem("gone", str(world / "missing.jpg"), "thing 5", base[0].boxes, 10, 10))
    wrong = (0.0, 0.0, 0.01, 0.01)
    answers = {
        "Where is thing 0?": f"It is at {format_box(normalised(items[0]))}.",  # Ferret 0-999 ints
        "Where is thing 1?": "[{:.4f}, {:.4f}, {:.4f}, {:.4f}]".format(*normalised(items[1])),  # 0-1 floats
        "Where is thing 2?": "I cannot see it.",  # unparseable -> miss
        "Where is thing 3?": "  ",  # empty -> miss
        "Where is thing 4?": f"{format_box(wrong)} or {format_box(normalised(items[4]))}",  # right at rank 2
    }
    calls = []

    def fake_generate(model, processor, images, prompts, max_new_tokens, batch_size, regions=None):
        calls.append(prompts)
        assert all(im.size == (it.width, it.height) for im, it in zip(images, items, strict=False))
        return [answers[p] for p in prompts]

    monkeypatch.setattr(inference, "generate_answers", fake_generate)
    bench = GroundingBenchmark("b", items, ("any",))
    processor = SimpleNamespace(tokenizer=train_world_tokenizer(["where is"], vocab_size=300))  # no cell tokens
    metrics, rows = evaluate_mllm_grounding(None, processor, [bench], cache_dir=tmp_path, batch_size=2)
    assert sorted(p for batch in calls for p in batch) == sorted(answers)  # the missing image is never asked
    assert GROUNDING_PROMPT.format("thing 0") in answers
    m = metrics["b"]
    assert m["any"]["acc@0.5"] == pytest.approx(2 / 5)
    assert m["any"]["recall@5"] == pytest.approx(3 / 5)
    assert m["counts"] == {
        "items": 6, "scored": 5, "status_empty_answer": 1, "status_missing_image": 1, "status_ok": 3,
        "status_unparseable": 1,
    }  # fmt: skip
    assert rows["b"]["k0"]["answer"].startswith("It is at [")
    # resumed from the cache: nothing is generated again
    calls.clear()
    again, _ = evaluate_mllm_grounding(None, processor, [bench], cache_dir=tmp_path, batch_size=2)
    assert calls == [] and again == metrics and "pointing" not in m  # answers without cells: no pointer scores
    processor.tokenizer.add_tokens(cell_tokens(4))  # a LLaVA built with mm_point_cells: its pointers are scored
    pointing, _ = evaluate_mllm_grounding(None, processor, [bench], cache_dir=tmp_path, batch_size=2)
    assert pointing["b"]["pointing"]["named"] == 0 and pointing["b"]["pointing"]["chance"] == 1 / 16
