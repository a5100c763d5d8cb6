"""Grounding experiments on cached tower tokens and on oracle tokens (experiments.tiny_llm_grounding.frozen_tokens)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.mllm import instruct_builders
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower
from experiments.tiny_llm_grounding.frozen_tokens import (
    TokenTable,
    main,
    oracle_image_tokens,
    preprocess,
    tower_tokens,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen_world")
    write_world(
        root, SyntheticWorldConfig(num_train=24, num_val=4, num_test=8, image_size=32), ["refer", "tokenizer"]
    )
    data = root / "grounding.json"
    instruct_builders.main(
        [
            "refer",
            str(root / "refer"),
            "--kinds",
            "grounding",
            "--image_root",
            str(root / "refer"),
            "--out",
            str(data),
        ]
    )
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    # 64 dims: room for the oracle's one-hots (42 classes + background + 2 x 4 grid cells)
    return {
        "root": root,
        "refer": root / "refer",
        "data": data,
        "tower": write_tiny_tower(root / "tower", hidden_size=64),
        "llm": write_tiny_llm(root / "llm", tok),
    }


def test_oracle_tokens_mark_class_row_and_column():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0]])  # the left half of the image
    tokens = oracle_image_tokens(boxes, torch.tensor([2]), num_classes=5, grid=4, hidden_size=32, scale=1.0)
    assert tokens.shape == (17, 32) and not tokens[0].any()
    patches = tokens[1:].view(4, 4, 32)
    assert (
        patches[:, :2, 3].eq(1).all() and patches[:, 2:, 0].eq(1).all()
    )  # class 2 + 1 on the left, else background
    assert patches[:, :2, [0, 1, 2, 4, 5]].eq(0).all()
    for row in range(4):
        for col in range(4):
            assert patches[row, col, 6 + row] == 1 and patches[row, col, 10 + col] == 1
    assert patches.sum() == 16 * 3  # nothing else set
    with pytest.raises(ValueError, match="need 14 dims"):
        oracle_image_tokens(boxes, torch.tensor([2]), num_classes=5, grid=4, hidden_size=8)


def test_token_table_answers_like_the_tower_and_refuses_unknown_images(world):
    model, processor = build_llava(LlavaBuildArgs(str(world["tower"]), str(world["llm"])))
    tower = model.model.vision_tower
    images = sorted((world["refer"] / "images").rglob("*.jpg"))[:5]
    pixels = preprocess(processor.image_processor, images)
    table = TokenTable(
        tower_tokens(tower, pixels[:4], layer=-2, batch_size=3), tower.config.num_hidden_layers
    )
    batch = torch.stack(pixels[:4])
    with torch.no_grad():
        expected = tower(batch, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(table(batch).hidden_states[-2], expected, atol=1e-6)
    with pytest.raises(KeyError, match="1 of 2 images have no stored tokens"):
        table(torch.stack([pixels[0], pixels[4]]))


@pytest.mark.parametrize("oracle", [False, True])
def test_finetune_on_tokens_end_to_end(world, tmp_path, oracle):
    argv = [
        "--vision_tower", str(world["tower"]), "--llm", str(world["llm"]), "--data_path", str(world["data"]),
        "--image_folder", str(world["refer"]), "--refer_root", str(world["refer"]), "--benchmarks",
        "refcoco_testA,refcocog_test", "--eval_limit", "4", "--steps", "6", "--batch_size", "4", "--lr", "3e-3",
        "--out_dir", str(tmp_path),
    ] + (["--oracle"] if oracle else [])  # fmt: skip
    main(argv)
    result = json.loads((tmp_path / "frozen_tokens.json").read_text())
    assert len(result["losses"]) == 6 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["losses"][-1] < result["losses"][0]  # the projector + LLM learned something
    assert set(result["grounding"]) == {"refcoco_testA", "refcocog_test"}
    assert (tmp_path / "loss.png").stat().st_size > 0 and len(
        (tmp_path / "train_log.jsonl").read_text().splitlines()
    ) == 6
    for scores in result["grounding"].values():
        assert scores["counts"]["items"] == 4 and "localisation" in scores
