import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem
from cloc_mllm.mllm.tiny import write_tiny_llm
from experiments.llava_prompt_order.pointing import (
    cell_of,
    cell_tokens,
    llm_with_cells,
    point_answers,
    pointing_scores,
)


def test_cells_are_raster_indices_of_the_box_centre():
    assert cell_of((0.0, 0.0, 0.1, 0.1), 8) == 0
    assert cell_of((0.117, 0.562, 0.460, 0.905), 8) == 5 * 8 + 2  # centre (0.29, 0.73): row 5, column 2
    assert cell_of((0.9, 0.9, 1.0, 1.0), 8) == 63  # the right and bottom edges stay in the last cell
    assert cell_tokens(2) == ["<cell_0>", "<cell_1>", "<cell_2>", "<cell_3>"]


def test_answers_point_first_and_keep_their_box():
    records = [{"id": "r", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the red circle?"}, {"from": "gpt", "value": "[500, 0, 999, 400]"},
    ]}]  # fmt: skip
    assert point_answers(records, 2)[0]["conversations"][1]["value"] == "<cell_1> [500, 0, 999, 400]"
    two = [{"id": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "[1, 2, 3, 4] [5, 6, 7, 8]"}]}]  # fmt: skip
    with pytest.raises(ValueError, match="record s: an answer with 2 boxes"):
        point_answers(two, 2)


def test_the_llm_gets_one_token_per_cell_with_distinct_rows_and_keeps_its_own(tmp_path):
    tokenizer = train_world_tokenizer(["where is the red circle"], vocab_size=300)
    llm = write_tiny_llm(tmp_path / "llm", tokenizer)
    before = AutoModelForCausalLM.from_pretrained(llm)
    out = llm_with_cells(llm, tmp_path / "cells", grid=2)
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tok.tokenize("<cell_3> [1")[0] == "<cell_3>"
    old = before.get_input_embeddings().weight.shape[0]
    for table, original in ((model.get_input_embeddings(), before.get_input_embeddings()),
                            (model.get_output_embeddings(), before.get_output_embeddings())):  # fmt: skip
        assert table.weight.shape[0] == old + 4
        assert torch.equal(table.weight[:old], original.weight)
        assert torch.pdist(table.weight[old:]).min() > 0  # every pair of cells differs
    assert llm_with_cells(llm, tmp_path / "cells", grid=2) == out  # made once, then reused


def test_pointing_scores_the_named_cell_against_the_referred_box():
    objects = (((0.0, 0.0, 40.0, 40.0), "circle"), ((60.0, 60.0, 100.0, 100.0), "square"))  # cells 0 and 3
    items = [
        GroundingItem(key=k, image_path="", text="t", boxes=((0.0, 0.0, 40.0, 40.0),), objects=objects) for k in "abc"
    ]
    bench = GroundingBenchmark(name="s", items=items, protocols=("any",))
    rows = {
        "a": {"answer": "<cell_0> [0, 0, 400, 400]", "boxes": [[0.0, 0.0, 0.4, 0.4]], "image_size": [100, 100]},
        "b": {"answer": "<cell_3> [0, 0, 400, 400]", "boxes": [[0.0, 0.0, 0.4, 0.4]], "image_size": [100, 100]},
        "c": {"answer": "[0, 0, 400, 400]", "boxes": [[0.0, 0.0, 0.4, 0.4]], "image_size": [100, 100]},
    }
    scores = pointing_scores(bench, rows, grid=2)
    assert scores["named"] == pytest.approx(2 / 3) and scores["right_cell"] == pytest.approx(1 / 3)
    assert scores["object_cell"] == pytest.approx(2 / 3)  # b names the square's cell: on an object, not the one
    assert scores["box_in_named_cell"] == pytest.approx(1 / 2) and scores["chance"] == 0.25
    bench.items = [GroundingItem(key="a", image_path="", text="t", boxes=((0.0, 0.0, 40.0, 40.0),))]
    assert pointing_scores(bench, rows, grid=2)["object_cell"] is None  # no objects listed: unknown, not 0
