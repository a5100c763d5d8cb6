import json

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_processor, prepare_tokenizer
from cloc_mllm.mllm.data import (
    IGNORE_INDEX,
    LazySupervisedDataset,
    RecordError,
    SupervisedCollator,
    check_box_text,
    encode_conversation,
)
from cloc_mllm.mllm.tiny import write_tiny_tower

N_IMAGE = 16  # 32 px / 8 px patches = 4 x 4, CLS dropped


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tower = write_tiny_tower(tmp_path_factory.mktemp("tower"))
    tok = train_world_tokenizer(
        ["where is the red circle", "a blue square", "describe the image"], vocab_size=300
    )
    tok = prepare_tokenizer(tok, "vicuna_v1", model_max_length=200, region_prompts=False)
    return build_processor(LlavaBuildArgs(str(tower), "unused"), tok, CLIPVisionConfig.from_pretrained(tower))


def _write(tmp_path, records, images=("a.jpg",)):
    for name in images:
        Image.new("RGB", (40, 30), "red").save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def _record(rid, answer="[100, 200, 300, 400]", image="a.jpg", question="<image>\nwhere is the red circle?"):
    rec = {
        "id": rid,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image:
        rec["image"] = image
    return rec


def test_labels_cover_exactly_the_answers(processor):
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    conv = [
        {"from": "human", "value": "<image>\nwhere is the red circle?"},
        {"from": "gpt", "value": "[100, 200, 300, 400]"},
        {"from": "human", "value": "describe the image"},
        {"from": "gpt", "value": "a blue square"},
    ]
    enc = encode_conversation(tok, conv, processor.chat_template, image_id, N_IMAGE, 1000)
    # Expected: each answer span (" answer" + eos) tokenised in place; everything else ignored.
    text = tok.apply_chat_template(
        [{"role": "user", "content": conv[0]["value"]}, {"role": "assistant", "content": conv[1]["value"]},
         {"role": "user", "content": conv[2]["value"]}, {"role": "assistant", "content": conv[3]["value"]}],
        tokenize=False,
    )  # fmt: skip
    whole = tok(text, add_special_tokens=False)["input_ids"]
    assert enc.input_ids.count(image_id) == N_IMAGE and len(enc.input_ids) == len(whole) + N_IMAGE - 1
    labelled = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX]
    first = tok(" [100, 200, 300, 400]", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    second = tok(" a blue square", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labelled == first + second
    # Labels equal the inputs wherever they are set (the model shifts them itself).
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(enc.input_ids, enc.labels, strict=True))
    # The labelled runs are contiguous and end with eos.
    ends = [
        i
        for i in range(len(enc.labels) - 1)
        if enc.labels[i] != IGNORE_INDEX and enc.labels[i + 1] == IGNORE_INDEX
    ]
    assert [enc.input_ids[i] for i in ends] + [enc.input_ids[-1]] == [tok.eos_token_id] * 2


def test_dataset_items_and_collator(tmp_path, processor):
    path = _write(
        tmp_path,
        [_record("r0"), _record("t0", answer="a blue square", image=None, question="describe the image")],
    )
    ds = LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)
    assert len(ds) == 2 and ds.stats.kept == 2
    assert ds.modality_lengths[0] > 0 > ds.modality_lengths[1]
    items = [ds[0], ds[1]]
    assert items[0]["pixel_values"].shape == (3, 32, 32) and items[1]["pixel_values"] is None
    batch = SupervisedCollator(processor.tokenizer.pad_token_id)(items)
    longest = max(len(i["input_ids"]) for i in items)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, longest)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["attention_mask"].sum().item() == sum(len(i["input_ids"]) for i in items)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_image_placeholder_added_when_missing(tmp_path, processor):
    path = _write(tmp_path, [_record("r0", question="where is the red circle?")])
    item = LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)[0]
    assert (item["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum() == N_IMAGE


def test_over_long_records_truncated_or_refused_and_counted(tmp_path, processor):
    long_answer = " ".join(["a blue square"] * 60)
    late_image = "describe the image " * 40 + "<image>"
    path = _write(
        tmp_path, [_record("ok"), _record("long", answer=long_answer), _record("late", question=late_image)]
    )
    ds = LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)
    assert ds.stats.as_dict() == {
        "records": 3, "kept": 2, "truncated": 1, "refused_image_cut": 1, "refused_no_answer": 0, "skipped_bad": 0,
        "refused": {"late": "487 tokens with image tokens beyond model_max_length 200"},
    }  # fmt: skip
    assert max(ds.lengths) == processor.tokenizer.model_max_length
    item = ds[1]
    assert len(item["input_ids"]) == 200 and (item["labels"] != IGNORE_INDEX).any()


def test_missing_image_names_the_record_or_is_skipped(tmp_path, processor):
    path = _write(
        tmp_path, [_record("r0"), _record("r1", image="gone.jpg"), {"id": "r2", "conversations": "x"}]
    )
    with pytest.raises(RecordError, match="record r1: image file .*gone.jpg not found"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)
    ds = LazySupervisedDataset(path, tmp_path, processor, N_IMAGE, skip_bad_records=True)
    assert len(ds) == 1 and ds.stats.skipped_bad == 2 and ds.stats.records == 3


def test_image_placeholder_in_an_answer_names_the_record(tmp_path, processor):
    path = _write(tmp_path, [_record("img9", answer="<image>", question="where?")])
    with pytest.raises(RecordError, match="record img9: <image> inside an answer"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)


def test_malformed_record_names_the_record(tmp_path, processor):
    path = _write(
        tmp_path, [{"id": "bad7", "image": "a.jpg", "conversations": [{"from": "gpt", "value": "hi"}]}]
    )
    with pytest.raises(RecordError, match="record bad7: turns must alternate"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)


def test_unparseable_box_text_names_the_record_even_when_skipping(tmp_path, processor):
    path = _write(tmp_path, [_record("r0"), _record("box3", answer="[100, 200, 300]")])
    with pytest.raises(ValueError, match=r"record box3: box text '\[100, 200, 300\]'"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE, skip_bad_records=True)
    assert len(LazySupervisedDataset(path, tmp_path, processor, N_IMAGE, check_boxes=False)) == 2


@pytest.mark.parametrize(
    "text", ["[1, 2, 3]", "[0.1, 0.2, 0.3, 0.4]", "[5, 5, 1000, 9]", "[500, 0, 100, 10]"]
)
def test_check_box_text_rejects(text):
    with pytest.raises(ValueError, match="is not"):
        check_box_text(f"the box {text}.")


def test_check_box_text_accepts_ferret_boxes_and_prose():
    check_box_text("at [0, 0, 999, 999] and [12, 13, 14, 15] [sic]")


def test_unreadable_image_at_load_names_record(tmp_path, processor):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "data.json").write_text(json.dumps([_record("rx")]))
    ds = LazySupervisedDataset(tmp_path / "data.json", tmp_path, processor, N_IMAGE)
    with pytest.raises(RecordError, match="record rx: cannot read"):
        ds[0]


def test_collator_without_images(processor):
    items = [{"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([-100, 6]), "pixel_values": None}]
    batch = SupervisedCollator(0)(items)
    assert "pixel_values" not in batch and batch["input_ids"].tolist() == [[5, 6]]


def test_bad_records_are_refused_by_id_and_counted(tmp_path, processor, caplog):
    """Issue 27's LLaVA faults in one file: malformed records, an ``<image>`` with no image to put
    there, an over-long conversation; each is named with its reason and counted, the rest trains."""
    long_question = "describe the image " * 40 + "<image>"
    path = _write(
        tmp_path,
        [
            _record("ok"),
            ["not", "a", "record"],  # no id: named by its position
            {"id": "noconv", "image": "a.jpg"},
            {"id": "oneturn", "conversations": [{"from": "gpt", "value": "hi"}]},
            _record("noimage", image=None),  # <image> in a text-only record
            _record("toolong", question=long_question),
            _record("textonly", image=None, question="where is the red circle?"),
        ],
    )
    with pytest.raises(RecordError, match="record #1: needs a 'conversations' list"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)
    ds = LazySupervisedDataset(path, tmp_path, processor, N_IMAGE, skip_bad_records=True)
    stats = ds.stats
    assert [r["id"] for r in ds.records] == ["ok", "textonly"]
    assert sorted(stats.refused) == ["#1", "noconv", "noimage", "oneturn", "toolong"]
    assert "placeholders for 0 image" in stats.refused["noimage"]
    assert "beyond model_max_length" in stats.refused["toolong"]
    assert (stats.skipped_bad, stats.refused_image_cut, stats.kept) == (4, 1, 2)
    assert (
        stats.kept + stats.skipped_bad + stats.refused_image_cut + stats.refused_no_answer
        == stats.records
        == 7
    )
    assert "record toolong not used (refused_image_cut)" in caplog.text


def test_a_cut_json_file_is_an_error_naming_it(tmp_path, processor):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([_record("ok"), _record("two")])[:-30])  # as if the copy was cut short
    with pytest.raises(ValueError, match=r"data.json: not a json list of LLaVA records"):
        LazySupervisedDataset(path, tmp_path, processor, N_IMAGE)
