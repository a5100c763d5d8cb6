"""Answers that point first: the cell format, the cell tokens of a built LLaVA, the data checks, the scores."""

import json
import random

import pytest
import torch
from transformers import CLIPVisionConfig

from cloc_mllm.box_text import format_box, parse_boxes
from cloc_mllm.data.refer import load_refer
from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem
from cloc_mllm.eval.mllm_grounding import pointing_scores
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava, build_processor, prepare_tokenizer
from cloc_mllm.mllm.data import LazySupervisedDataset
from cloc_mllm.mllm.instruct_builders import facts_to_conversations, refer_facts
from cloc_mllm.mllm.pointing import (
    cell_of,
    cell_token_ids,
    cell_tokens,
    check_pointers,
    point_records,
    pointed_box,
    tokenizer_grid,
)
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower


def test_cells_are_raster_order_of_the_box_centre():
    assert cell_tokens(2) == ["<cell_0>", "<cell_1>", "<cell_2>", "<cell_3>"]
    assert cell_of((0.1, 0.1, 0.3, 0.3), 8) == 1 * 8 + 1  # centre (0.2, 0.2)
    assert cell_of((0.5, 0.0, 1.0, 0.2), 4) == 0 * 4 + 3  # centre (0.75, 0.1): top row, last column
    assert cell_of((0.9, 0.9, 1.0, 1.0), 4) == 15  # the image's far edge stays in the last cell
    with pytest.raises(ValueError, match="positive"):
        cell_tokens(0)


def test_pointer_names_the_cell_of_the_box_as_written():
    """The pointer follows the rounded 0-999 text, never the exact box: both are the same cell even
    where the box centre sits on a cell edge (here 0.25 of the image, the edge between cells 1 and 2)."""
    rng = random.Random(0)
    for grid in (4, 8):
        for _ in range(500):
            x1, y1 = rng.random() * 0.9, rng.random() * 0.9
            text = pointed_box((x1, y1, x1 + rng.random() * (1 - x1), y1 + rng.random() * (1 - y1)), grid)
            check_pointers(text, grid)
    on_edge = (0.2, 0.2, 0.2999, 0.2999)  # exact centre 0.24995 (cell 9 of 8 x 8); written [200, 200, 300, 300]: 0.25025
    written = parse_boxes(format_box(on_edge))[0]
    assert (cell_of(on_edge, 8), cell_of(written, 8)) == (9, 18)
    assert pointed_box(on_edge, 8) == "<cell_18> [200, 200, 300, 300]"


def test_check_pointers_refuses_what_would_teach_wrong_pointing():
    check_pointers("[100, 100, 300, 300]", 0)  # no pointer: nothing to check
    with pytest.raises(ValueError, match="without cell tokens"):
        check_pointers("<cell_9> [100, 100, 300, 300]", 0)
    with pytest.raises(ValueError, match="centre is in cell 9"):
        check_pointers("<cell_10> [100, 100, 300, 300]", 8)
    with pytest.raises(ValueError, match="must lead a box"):
        check_pointers("<cell_9> somewhere", 8)


def test_point_records_points_every_answer_box_once():
    records = [{"id": "a", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in [0, 0, 999, 999]?"}, {"from": "gpt", "value": "a dog"},
        {"from": "human", "value": "Where are the cats?"}, {"from": "gpt", "value": "[0, 0, 100, 100] -> [900, 900, 999, 999]"},
    ]}]  # fmt: skip
    pointed = point_records(json.loads(json.dumps(records)), 4)
    turns = [t["value"] for t in pointed[0]["conversations"]]
    assert turns[0] == records[0]["conversations"][0]["value"]  # a box the user gives is not pointed at
    assert turns[3] == "<cell_0> [0, 0, 100, 100] -> <cell_15> [900, 900, 999, 999]"
    assert point_records(json.loads(json.dumps(pointed)), 4) == pointed  # pointing twice changes nothing


def test_instruction_data_points_grounding_answers_only(tmp_path):
    write_world(tmp_path, SyntheticWorldConfig(num_train=6, num_val=2, num_test=2, image_size=48), ["refer"])
    facts = refer_facts(load_refer(tmp_path / "refer", "refcoco", "unc", "train"))
    plain = facts_to_conversations(facts, "rc", kinds=["grounding", "referring"], seed=1)
    pointing = facts_to_conversations(facts, "rc", kinds=["grounding", "referring"], seed=1, point_grid=8)
    pairs = [(p["value"], q["value"]) for a, b in zip(plain, pointing, strict=True)
             for p, q in zip(a["conversations"], b["conversations"], strict=True)]  # fmt: skip
    grounding = [(p, q) for p, q in pairs if p.startswith("[")]
    assert grounding and all(q.startswith("<cell_") and q.endswith(p) for p, q in grounding)
    assert all(p == q for p, q in pairs if not p.startswith("["))  # questions and referring answers unchanged
    for _, q in grounding:
        check_pointers(q, 8)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    tok = train_world_tokenizer(["where is the red circle", "a blue square"], vocab_size=300)
    return {"tower": str(write_tiny_tower(root / "tower")), "llm": str(write_tiny_llm(root / "llm", tok))}


def test_built_llava_holds_one_distinct_cell_token_per_patch_and_rebuilds_exactly(parts):
    args = LlavaBuildArgs(parts["tower"], parts["llm"], mm_point_cells=True)
    model, processor = build_llava(args)
    tokenizer = processor.tokenizer
    assert model.config.model_type == "llava"  # cells change the vocabulary only: still a plain LLaVA
    assert tokenizer_grid(tokenizer) == 4  # 32 px tower, 8 px patches
    ids = cell_token_ids(tokenizer)
    rows = model.get_input_embeddings().weight[ids]  # (16, D)
    assert torch.cdist(rows, rows).add(torch.eye(len(ids)) * 1e9).min() > 1e-3  # pairwise distinct
    image_row = model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<image>")]
    assert not torch.allclose(image_row, rows.mean(0))  # the cells carry noise, <image> is the plain mean
    again, _ = build_llava(args)  # LoRA merges rebuild the base: it must come out the same
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    encoded = tokenizer("<cell_5> [1, 2, 3, 4]", add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids[5] and "<cell_5>" in tokenizer.decode(encoded, skip_special_tokens=True)
    plain, plain_processor = build_llava(LlavaBuildArgs(parts["tower"], parts["llm"]))
    assert tokenizer_grid(plain_processor.tokenizer) == 0 and cell_token_ids(plain_processor.tokenizer) == []


def test_patch_pointer_starts_as_the_vocabulary_pointer_then_scores_cells_by_their_own_patch(parts):
    """Zero-initialised, a patch pointer is the plain cell model; with a query, a cell's logit moves by
    exactly the match of the answer state with that cell's patch token of the sequence's *own* image,
    nothing else moves, and cached greedy decoding agrees with a full forward of the decoded text."""
    from PIL import Image

    model, processor = build_llava(LlavaBuildArgs(parts["tower"], parts["llm"], mm_point_cells=True, mm_point_to_patches=True))
    assert model.config.model_type == "cloc_llava" and model.config.cell_token_ids == cell_token_ids(processor.tokenizer)
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    processor.tokenizer.padding_side = "left"
    batch = processor(images=images, text=["<image>where is the red circle", "<image>a blue square <cell_7>"],
                      return_tensors="pt", padding=True, add_special_tokens=False)  # fmt: skip
    pointer = model.model.multi_modal_projector
    model.eval()
    with torch.no_grad():
        start = model(**batch).logits  # (B, L, V)
        model.config.patch_pointer = False  # the same weights read as the vocabulary pointer
        vocabulary = model(**batch).logits
        model.config.patch_pointer = True
        assert torch.equal(start, vocabulary)
        pointer.query.weight.normal_(0, 0.2)
        scored = model(**batch).logits
    cells = cell_token_ids(processor.tokenizer)
    others = [i for i in range(scored.shape[-1]) if i not in cells]
    assert torch.equal(scored[..., others], start[..., others])
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state  # (B, L, H)
        patches = torch.stack(list(model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output))
    expected = start[..., cells] + torch.einsum("blh,bkh->blk", pointer.query(hidden), pointer.keys(patches))
    assert torch.allclose(scored[..., cells], expected, atol=1e-4)
    with torch.no_grad():
        pointer.carry.fill_(0.5)  # a written cell now carries its patch token into what follows
        carried = model(**batch).logits
        assert not torch.allclose(carried[1, -1, others], scored[1, -1, others])
        assert torch.equal(carried[0, :, others], scored[0, :, others])  # the first text writes no cell
        output = model.generate(**batch, max_new_tokens=6, do_sample=False)
        again = model(input_ids=output, attention_mask=torch.ones_like(output), pixel_values=batch["pixel_values"]).logits
    prompt = batch["input_ids"].shape[1]
    assert torch.equal(again[:, prompt - 1 : -1].argmax(-1), output[:, prompt:])
    with pytest.raises(ValueError, match="needs mm_point_cells=True"):
        build_llava(LlavaBuildArgs(parts["tower"], parts["llm"], mm_point_to_patches=True))


def test_training_data_refuses_pointers_the_model_cannot_write_or_that_point_wrong(parts, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    tower_config = CLIPVisionConfig.from_pretrained(parts["tower"])

    def dataset(answer, grid):
        tok = prepare_tokenizer(train_world_tokenizer(["where is it"], vocab_size=300), "vicuna_v1", 200, False, grid)
        processor = build_processor(LlavaBuildArgs(parts["tower"], "unused"), tok, tower_config)
        record = {"id": "r7", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nwhere is it?"}, {"from": "gpt", "value": answer}]}  # fmt: skip
        (tmp_path / "d.json").write_text(json.dumps([record]))
        return LazySupervisedDataset(tmp_path / "d.json", tmp_path, processor, num_image_tokens=16)

    assert dataset("<cell_5> [300, 300, 400, 400]", 4).stats.kept == 1
    with pytest.raises(ValueError, match="record r7: .*without cell tokens"):
        dataset("<cell_5> [300, 300, 400, 400]", 0)
    with pytest.raises(ValueError, match="record r7: .*centre is in cell 5"):
        dataset("<cell_6> [300, 300, 400, 400]", 4)


def test_pointing_scores_name_the_referred_cell_an_object_cell_and_the_box_agreement():
    items = [
        GroundingItem(f"k{i}", "unused.jpg", "thing", ((0, 0, 20, 20),), 80, 80,
                      objects=(((0, 0, 20, 20), "a"), ((60, 60, 80, 80), "b")))
        for i in range(4)
    ]  # fmt: skip  (4 x 4 grid on 80 px: the referred box is cell 0, the other object cell 15)
    answers = ["<cell_0> [0, 0, 250, 250]", "<cell_15> [750, 750, 999, 999]", "<cell_15> [0, 0, 250, 250]", "[0, 0, 9, 9]"]
    rows = {f"k{i}": {"answer": a, "boxes": [list(b) for b in parse_boxes(a)], "image_size": [80, 80], "status": "ok"}
            for i, a in enumerate(answers)}  # fmt: skip
    scores = pointing_scores(GroundingBenchmark("b", items, ("any",)), rows, 4)
    assert scores == {"items": 4, "named": 0.75, "right_cell": 0.25, "object_cell": 0.75,
                      "box_in_named_cell": pytest.approx(2 / 3), "chance": 1 / 16}  # fmt: skip
