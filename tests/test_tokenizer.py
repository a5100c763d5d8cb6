"""The world tokenizer: fixed special ids, exact round trips, one token per digit, HF loading."""

import pytest

from cloc_mllm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_tokenizer, train_world_tokenizer

TEXTS = [
    "a picture of a small red circle, a blue square and two green stars on a noisy background",
    "the red circle left of the blue square",
    "a purple diamond that is to the left of the yellow hexagon",
    "Where is the large orange cross on the right? [120, 45, 600, 999]",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_world_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=512)


def test_special_ids_are_fixed(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (PAD_ID, UNK_ID) == (0, 1)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_ID, EOS_ID) == (2, 3)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [
        "<pad>",
        "<unk>",
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    ids = tokenizer("the red circle").input_ids
    assert ids[0] == 2 and ids[-1] == 3 and 3 not in ids[:-1]


def test_round_trip_is_exact_for_lowercase_text(tokenizer):
    for text in ["where is the red circle? [120, 45, 600, 999]", "two  spaces,and\ttabs\n", "über 😀 café"]:
        ids = tokenizer(text).input_ids
        assert UNK_ID not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    assert (
        tokenizer.decode(tokenizer("The RED Circle").input_ids, skip_special_tokens=True) == "the red circle"
    )


def test_every_digit_is_its_own_token(tokenizer):
    for n in range(1000):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(f"[{n}, 7]", add_special_tokens=False).input_ids)
        assert tokens == ["Ġ[", *str(n), ",", "Ġ", "7", "]"]


def test_vocab_is_bounded_and_words_merge(tokenizer):
    assert len(tokenizer) <= 512
    # The same word is the same single token at the start of a text and inside it.
    assert tokenizer("circle", add_special_tokens=False).input_ids == tokenizer("a circle").input_ids[2:3]


def test_saved_directory_loads_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "the small red circle at the top"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.eos_token_id == EOS_ID and loaded.pad_token_id == PAD_ID
    batch = loaded(["a", text], padding=True)
    assert batch.input_ids[0][-1] == PAD_ID and batch.attention_mask[0][-1] == 0


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_world_tokenizer(TEXTS, vocab_size=100)
