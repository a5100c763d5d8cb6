import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cloc_mllm.mllm.templates import (
    PLAIN,
    VICUNA_V1,
    render_prompt,
    render_with_answer_spans,
    resolve_chat_template,
    to_messages,
)

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _two_turns(q1: str, a1: str, q2: str, a2: str) -> list[dict[str, str]]:
    values = (q1, a1, q2, a2)
    return to_messages([{"from": speaker, "value": v} for speaker, v in zip(["human", "gpt"] * 2, values)])


def test_vicuna_v1_matches_llava_format(tokenizer):
    messages = _two_turns("<image>\nq1", "a1", "q2", "a2")
    text, spans = render_with_answer_spans(tokenizer, messages, VICUNA_V1)
    assert text == f"<s>{SYSTEM} USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    assert [text[s:e] for s, e in spans] == [" a1</s>", " a2</s>"]


def test_plain_puts_each_answer_right_after_its_prompt(tokenizer):
    messages = _two_turns("<image>\n the red circle", "1, 2, 3, 4", " the cat", "5, 6, 7, 8")
    text, spans = render_with_answer_spans(tokenizer, messages, PLAIN)
    assert text == "<s><image>\n the red circle1, 2, 3, 4</s> the cat5, 6, 7, 8</s>"
    assert [text[s:e] for s, e in spans] == ["1, 2, 3, 4</s>", "5, 6, 7, 8</s>"]
    assert render_prompt(tokenizer, " the cat", PLAIN) == "<s><image>\n the cat"


def test_generation_prompt_and_structured_content(tokenizer):
    prompt = render_prompt(tokenizer, "where?", VICUNA_V1)
    assert prompt == f"<s>{SYSTEM} USER: <image>\nwhere? ASSISTANT:"
    parts = [{"role": "user", "content": [{"type": "text", "text": "where?"}, {"type": "image"}]}]
    assert (
        tokenizer.apply_chat_template(
            parts, chat_template=VICUNA_V1, tokenize=False, add_generation_prompt=True
        )
        == prompt
    )


def test_system_turn_replaces_default(tokenizer):
    messages = to_messages(
        [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    )
    text, spans = render_with_answer_spans(tokenizer, messages, VICUNA_V1)
    assert text == "<s>Be brief. USER: q ASSISTANT: a</s>"
    assert text[spans[0][0] : spans[0][1]] == " a</s>"


@pytest.mark.parametrize(
    "turns, message",
    [
        ([{"from": "gpt", "value": "a"}], "alternate"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], "alternate"),
        ([{"from": "robot", "value": "q"}], "unknown speaker"),
        ([{"from": "human", "value": 3}], "must be text"),
        ([{"value": "q"}], "needs 'from'"),
    ],
)
def test_to_messages_rejects_malformed_turns(turns, message):
    with pytest.raises(ValueError, match=message):
        to_messages(turns)


def test_resolve_template(tokenizer):
    assert resolve_chat_template("vicuna_v1", tokenizer) == VICUNA_V1
    with pytest.raises(ValueError, match="unknown conversation template"):
        resolve_chat_template("chatml9", tokenizer)
    with pytest.raises(ValueError, match="has none"):
        resolve_chat_template("tokenizer", tokenizer)
