"""Conversation templates: LLaVA json turns -> chat messages -> one string, and the answer spans in it.

Every template is a Jinja chat template, so the one saved with the processor is the one used in
training, in ``generate_answers`` and by plain-transformers users calling ``apply_chat_template``.
``vicuna_v1`` is LLaVA-1.5's format, ``chatml`` the one of ChatML-trained models (SmolLM2, Qwen,
...) without a default system text, ``tokenizer`` keeps the language model's own template.
Answer spans are found by rendering growing prefixes of the conversation, which works for any template
without ``{% generation %}`` markers.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"

# Every template renders a message's content with this macro: content may be a string holding
# "<image>" or a list of {"type": "image"} / {"type": "text"} parts.
_RENDER_MACRO = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
# Vicuna and plain start with bos; ChatML models mark each turn instead (their bos is "<|im_start|>").
_RENDER_CONTENT = _RENDER_MACRO + "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"

# LLaVA-1.5 (conv_vicuna_v1): "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:".
VICUNA_V1 = (
    _RENDER_CONTENT + "{%- if messages[0]['role'] == 'system' -%}{{ render(messages[0]['content']) + ' ' }}"
    "{%- else -%}{{ 'A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human\\'s questions. ' }}"
    "{%- endif -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + render(message['content']) + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# LLaVA's "plain" (its stage-1 format): no system text and no roles, each answer follows its prompt
# directly and ends with eos. Used for the grounded-phrase warm-up, where the box must come right after
# the object's words ("<image>\n the red circle" + "117, 562, 460, 905</s>").
PLAIN = (
    _RENDER_CONTENT + "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ render(message['content']) }}"
    "{%- else -%}{{ render(message['content']) + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# ChatML: "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n". A system turn is
# rendered only when the data has one (each default system sentence costs every sequence ~15 tokens).
CHATML = (
    _RENDER_MACRO + "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render(message['content']) + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

TEMPLATES = {"vicuna_v1": VICUNA_V1, "plain": PLAIN, "chatml": CHATML}
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def resolve_chat_template(name: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Template text for ``name``: a key of ``TEMPLATES`` or ``"tokenizer"`` (the LLM's own)."""
    if name == "tokenizer":
        if not tokenizer.chat_template:
            raise ValueError("conversation template 'tokenizer' asked for, but the tokenizer has none")
        return tokenizer.chat_template
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: tokenizer, {', '.join(TEMPLATES)}")
    if name == "chatml" and tokenizer.eos_token != "<|im_end|>":
        raise ValueError(
            f"conversation template 'chatml' needs a ChatML tokenizer (eos '<|im_end|>', which ends each "
            f"answer and generation), got eos {tokenizer.eos_token!r}; use 'tokenizer' or 'vicuna_v1'"
        )
    return TEMPLATES[name]


def to_messages(conversations: Sequence[dict]) -> list[dict[str, str]]:
    """LLaVA turns ``[{"from": "human"|"gpt", "value": str}]`` -> chat messages.

    Raises ``ValueError`` on unknown roles, non-string values or turns that do not alternate
    user/assistant (after an optional leading system turn).
    """
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {i} needs 'from' and 'value', got {turn!r}")
        role = _ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"turn {i} has unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise ValueError(f"turn {i} value must be text, got {type(turn['value']).__name__}")
        messages.append({"role": role, "content": turn["value"]})
    dialogue = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * ((len(dialogue) + 1) // 2)
    if not dialogue or [m["role"] for m in dialogue] != expected[: len(dialogue)]:
        raise ValueError("turns must alternate human/gpt, starting with human")
    return messages


def render_with_answer_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], chat_template: str
) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text and the ``[start, end)`` character spans of each answer.

    An answer's span is what its turn adds after the generation prompt (the answer and the template's
    end-of-turn text, e.g. ``" a</s>"``), i.e. exactly what the model must learn to produce.
    """

    def render(prefix: list[dict[str, str]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            prefix, chat_template=chat_template, tokenize=False, add_generation_prompt=generation_prompt
        )

    text = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, with_answer = render(messages[:i], True), render(messages[: i + 1], False)
        if not (with_answer.startswith(prompt) and text.startswith(with_answer)):
            raise ValueError("the chat template does not render a conversation as growing prefixes")
        spans.append((len(prompt), len(with_answer)))
    return text, spans


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: str) -> str:
    """One user turn (with ``<image>`` placed first when missing) ready for generation."""
    if IMAGE_TOKEN not in prompt:
        prompt = f"{IMAGE_TOKEN}\n{prompt}"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        chat_template=chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
