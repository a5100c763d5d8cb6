import json

import pytest
from transformers import CLIPVisionConfig

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.data.flickr30k import load_flickr30k_entities
from cloc_mllm.data.refer import load_refer
from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_processor, prepare_tokenizer
from cloc_mllm.mllm.data import LazySupervisedDataset
from cloc_mllm.mllm.instruct_builders import (
    Fact,
    facts_to_conversations,
    flickr_facts,
    grounding_prompt,
    main,
    refer_facts,
    referring_prompt,
)
from cloc_mllm.mllm.tiny import write_tiny_tower


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(
        root, SyntheticWorldConfig(num_train=12, num_val=4, num_test=4, image_size=48), ["refer", "flickr30k"]
    )
    return root


def test_refer_grounding_answers_are_the_boxes(world):
    refs = load_refer(world / "refer", "refcoco", "unc", "train")
    records = facts_to_conversations(refer_facts(refs), "rc", kinds=["grounding"], turns_per_record=2)
    refs_of = {}
    for ref in refs:
        for sentence in ref.sentences:
            refs_of.setdefault((ref.file_name, sentence), []).append(ref)
    turns = 0
    for record in records:
        conv = record["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        file_name = record["image"].rsplit("/", 1)[-1]
        for question, answer in zip(conv[::2], conv[1::2], strict=True):
            (box,) = parse_boxes(answer["value"])
            candidates = [
                r for (f, s), rs in refs_of.items() if f == file_name and s in question["value"] for r in rs
            ]
            expected = [
                [r.box[0] / r.width, r.box[1] / r.height, r.box[2] / r.width, r.box[3] / r.height]
                for r in candidates
            ]
            assert any(box == pytest.approx(e, abs=1 / 999) for e in expected), (question, answer)
            turns += 1
    assert turns == sum(len(r.sentences) for r in refs)


def test_referring_turns_with_region_tokens(world):
    refs = load_refer(world / "refer", "refcoco+", "unc", "train")
    records = facts_to_conversations(refer_facts(refs), "rc+", kinds=["referring"], region_token=True)
    record = records[0]
    questions = record["conversations"][::2]
    assert all("<region>" in q["value"] for q in questions)
    assert len(record["regions"]) == len(questions)
    for question, region in zip(questions, record["regions"], strict=True):
        assert parse_boxes(question["value"])[0] == pytest.approx(region, abs=1 / 999)


def test_flickr_phrases_with_several_boxes(world):
    items = load_flickr30k_entities(world / "flickr30k_entities", "train")
    facts = flickr_facts(items)
    assert len(facts) == len(items)
    multi = Fact("x.jpg", "The two dogs", ((0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9)))
    (record,) = facts_to_conversations([multi], "f", kinds=["grounding"])
    question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
    assert "the two dogs" in question  # sentence-initial capital dropped mid-question
    assert answer == "[100, 100, 200, 200], [500, 500, 899, 899]"


def test_phrase_turns_put_the_box_numbers_after_the_words():
    facts = [
        Fact("x.jpg", "The red circle", ((0.1, 0.2, 0.3, 0.4),)),
        Fact("x.jpg", "two dogs", ((0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9))),
    ]
    (record,) = facts_to_conversations(facts, "p", kinds=["phrase"], seed=1)
    turns = {
        t["value"].removeprefix("<image>\n"): a["value"] for t, a in zip(*[iter(record["conversations"])] * 2)
    }
    assert turns == {
        " the red circle": "100, 200, 300, 400",
        " two dogs": "100, 100, 200, 200; 500, 500, 899, 899",
    }
    assert record["conversations"][0]["value"].startswith("<image>\n ")
    with pytest.raises(ValueError, match="cannot share a file"):
        facts_to_conversations(facts, "p", kinds=["phrase", "grounding"])


def test_cli_writes_json_the_dataset_accepts(world, tmp_path):
    out = tmp_path / "inst.json"
    main(["refer", str(world / "refer"), "--dataset", "refcocog", "--split_by", "umd", "--split", "train",
          "--out", str(out), "--image_root", str(world / "refer")])  # fmt: skip
    records = json.loads(out.read_text())
    assert records and not records[0]["image"].startswith("/")
    tower = write_tiny_tower(tmp_path / "tower")
    tok = prepare_tokenizer(train_world_tokenizer(["where is"], vocab_size=300), "vicuna_v1", 512, False)
    processor = build_processor(
        LlavaBuildArgs(str(tower), "unused"), tok, CLIPVisionConfig.from_pretrained(tower)
    )
    dataset = LazySupervisedDataset(out, world / "refer", processor, num_image_tokens=16)
    assert dataset.stats.kept == len(records) and dataset[0]["pixel_values"].shape == (3, 32, 32)


def test_eval_prompts_are_training_templates():
    assert grounding_prompt("the red circle") == "Where is the red circle?"
    # a capital that only starts a Flickr30k phrase is lowered, as the training turns do; "TV" is kept
    assert grounding_prompt("The green circle") == "Where is the green circle?"
    assert grounding_prompt("TV screen", "Locate {} in the image.") == "Locate TV screen in the image."
    assert referring_prompt((0, 0, 0.5, 0.5), region_token=True) == "What is in [0, 0, 500, 500] <region>?"
    with pytest.raises(ValueError, match="kinds must be"):
        facts_to_conversations([], "x", kinds=["captioning"])
