"""Captioner stage: re-caption images with a visually enriched captioner (VESL step 1).

Any image-to-text model ``transformers`` loads with ``AutoModelForImageTextToText`` works, from a hub id
or a local directory. Chat models (a processor with a chat template: LLaVA, Qwen-VL, ...) get an
instruction asking for a visually detailed caption; plain captioners (BLIP, GIT, vision-encoder-decoder)
get the prompt as a text prefix to continue, or none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

DETAILED_PROMPT = (
    "Describe this image in detail. Name every visible object with its color, size, material and position."
)
CAPTION_MODES = ("keep", "replace", "both")

CaptionFn = Callable[[list[Image.Image]], list[str]]


class HFCaptioner:
    """Batched captioning with greedy decoding, so re-runs reproduce the same captions."""

    def __init__(self, model, processor, prompt: str | None = None, max_new_tokens: int = 96):
        self.model, self.processor = model.eval(), processor
        self.chat = getattr(processor, "chat_template", None) is not None
        self.prompt = prompt if prompt is not None or not self.chat else DETAILED_PROMPT
        tokenizer = getattr(processor, "tokenizer", None)
        if self.chat and tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        prompt: str | None = None,
        max_new_tokens: int = 96,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> HFCaptioner:
        """Any ``AutoModelForImageTextToText`` checkpoint: a hub id or a local directory."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(model_id), prompt, max_new_tokens)

    def _prompt_texts(self, n: int) -> list[str] | None:
        if self.chat:
            conversation = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}
            ]
            text = self.processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
            return [text] * n
        return [self.prompt] * n if self.prompt else None

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        texts = self._prompt_texts(len(images))
        kwargs = {"padding": True} if texts is not None else {}
        inputs = self.processor(images=images, text=texts, return_tensors="pt", **kwargs).to(
            self.model.device
        )
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sequences = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and sequences.shape[1] > prompt_ids.shape[1]:
            # Decoder-only models echo the prompt (chat template, image tokens): keep what was generated.
            if torch.equal(sequences[:, : prompt_ids.shape[1]], prompt_ids):
                sequences = sequences[:, prompt_ids.shape[1] :]
        decoded = self.processor.batch_decode(sequences, skip_special_tokens=True)
        return [" ".join(text.split()) for text in decoded]


def compose_caption(source: str, generated: str | None, mode: str) -> str:
    """The record's caption for a caption mode.

    ``keep``: the source caption (alt-text); ``replace``: the generated one; ``both``: the alt-text followed
    by the enriched caption, so the image-level text keeps both and phrases come from both.
    """
    if mode not in CAPTION_MODES:
        raise ValueError(f"unknown caption mode {mode!r}; expected one of {CAPTION_MODES}")
    source = " ".join(source.split())
    if mode == "keep":
        return source
    if generated is None:
        raise ValueError(f"caption mode {mode!r} needs a captioner")
    if mode == "replace" or not source:
        return generated
    return f"{source}{'' if source[-1] in '.!?' else '.'} {generated}"
