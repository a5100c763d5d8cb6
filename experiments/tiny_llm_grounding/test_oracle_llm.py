"""The LLM taught to ground on oracle tokens (experiments.tiny_llm_grounding.oracle_llm)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.mllm import instruct_builders
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower
from experiments.tiny_llm_grounding.oracle_llm import OracleLLMArguments, main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle_world")
    write_world(
        root, SyntheticWorldConfig(num_train=24, num_val=4, num_test=8, image_size=32), ["refer", "tokenizer"]
    )
    data = {}
    for kind in ("grounding", "phrase"):
        data[kind] = root / f"{kind}.json"
        refer = str(root / "refer")
        instruct_builders.main(
            ["refer", refer, "--kinds", kind, "--image_root", refer, "--out", str(data[kind])]
        )
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    return {
        "refer": root / "refer",
        "data": data,
        # 64 dims: room for the oracle's one-hots (42 classes + background + 2 x 4 grid cells)
        "tower": write_tiny_tower(root / "tower", hidden_size=64),
        "llm": write_tiny_llm(root / "llm", tok),
    }


def test_taught_llm_is_a_plain_causal_lm_that_a_llava_builds_on(world, tmp_path):
    out = tmp_path / "taught"
    argv = [
        "--vision_tower", str(world["tower"]), "--llm", str(world["llm"]), "--chat_data", str(world["data"]["grounding"]),
        "--phrase_data", str(world["data"]["phrase"]), "--image_folder", str(world["refer"]),
        "--refer_root", str(world["refer"]), "--phrase_steps", "5", "--chat_steps", "4", "--batch_size", "4",
        "--lr", "3e-3", "--benchmarks", "refcoco_testA", "--eval_limit", "4", "--out_dir", str(out),
    ]  # fmt: skip
    main(argv)
    summary = json.loads((out / "oracle_llm.json").read_text())
    assert [len(summary["losses"][phase]) for phase in ("phrase", "chat")] == [5, 4]
    assert summary["losses"]["phrase"][-1] < summary["losses"]["phrase"][0]
    assert summary["data"]["phrase"]["kept"] > 0 and summary["data"]["chat"]["kept"] > 0
    assert summary["grounding"]["refcoco_testA"]["counts"]["items"] == 4
    assert (
        len((out / "train_log.jsonl").read_text().splitlines()) == 9 and (out / "loss.png").stat().st_size > 0
    )

    taught, initial = (AutoModelForCausalLM.from_pretrained(path) for path in (out, world["llm"]))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<image>" in tokenizer.get_vocab() and taught.get_input_embeddings().weight.shape[0] == len(
        tokenizer
    )
    changed = [
        not torch.equal(a, b)
        for (name, a), (_, b) in zip(taught.named_parameters(), initial.named_parameters(), strict=False)
        if "embed_tokens" not in name  # the taught LLM has one more row (<image>)
    ]
    assert all(changed)  # every weight of the LLM trained
    # a LLaVA on the taught LLM gets its weights as they are: no new token, no resized embedding
    model, processor = build_llava(LlavaBuildArgs(str(world["tower"]), str(out)))
    assert len(processor.tokenizer) == len(tokenizer)
    assert torch.equal(model.lm_head.weight, taught.lm_head.weight)
    assert torch.equal(model.get_input_embeddings().weight, taught.get_input_embeddings().weight)


def test_arguments_refuse_no_steps_and_phrases_without_data(world, tmp_path):
    common = dict(
        vision_tower="t", llm="l", chat_data="c", image_folder="i", refer_root="r", out_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="not both 0"):
        OracleLLMArguments(**common, phrase_steps=0, chat_steps=0)
    with pytest.raises(ValueError, match="needs --phrase_data"):
        OracleLLMArguments(**common, phrase_steps=3)
