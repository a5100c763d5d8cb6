"""Load a finetuned LLaVA (plain, ``cloc_llava`` or a LoRA adapter dir) and answer prompts in batches.

Prompts go through the same chat template as training (the one saved with the processor), batches are
left-padded so every answer starts at the same column, and decoding is greedy so evaluation is repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaForConditionalGeneration,
    ProcessorMixin,
)

import cloc_mllm.mllm.modeling_cloc_llava  # noqa: F401  (registers the cloc_llava type)
from cloc_mllm.data.images import upright_rgb
from cloc_mllm.mllm.region_prompts import boxes_to_model_frame, region_boxes_tensor
from cloc_mllm.mllm.templates import render_prompt

Box = Sequence[float]


def load_mllm(
    model_dir: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """Model in eval mode on ``device`` (default: CUDA when present) and its processor.

    A LoRA output dir (``adapter_config.json``) is merged into its rebuilt base in memory.
    """
    model_dir = Path(model_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if (model_dir / "adapter_config.json").exists():
        from cloc_mllm.mllm.lora import load_merged

        model, processor = load_merged(model_dir, dtype=dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        processor = AutoProcessor.from_pretrained(model_dir)
    return model.to(device).eval(), processor


@torch.inference_mode()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    regions: Sequence[Sequence[Box]] | None = None,
    progress: bool = False,
) -> list[str]:
    """One greedy answer per (image, prompt).

    ``prompts`` are user questions; ``<image>`` is put in front when absent, as in training data.
    ``regions[i]`` lists the normalised xyxy boxes for the ``<region>`` placeholders of ``prompts[i]``
    (region-prompt models only).
    """
    if len(images) != len(prompts) or (regions is not None and len(regions) != len(prompts)):
        raise ValueError(
            f"got {len(images)} images, {len(prompts)} prompts, {len(regions or [])} region lists"
        )
    tokenizer = processor.tokenizer
    texts = [render_prompt(tokenizer, p, processor.chat_template) for p in prompts]
    answers: list[str] = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="generate"):
            end = start + batch_size
            batch = processor(
                images=[upright_rgb(im) for im in images[start:end]],
                text=texts[start:end],
                padding=True,
                add_special_tokens=False,
                return_tensors="pt",
            ).to(model.device)
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)  # bf16/fp16 models
            extra = (
                {}
                if regions is None
                else _region_inputs(model, processor, images[start:end], regions[start:end])
            )
            output = model.generate(**batch, **extra, max_new_tokens=max_new_tokens, do_sample=False)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
    return answers


def _region_inputs(
    model: LlavaForConditionalGeneration,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    regions: Sequence[Sequence[Box]],
) -> dict:
    """``region_boxes`` (B, K, 4) in the model frame for a region-prompt model."""
    if not getattr(model.config, "region_prompts", False):
        raise ValueError("regions given, but this model was not trained with region prompts")
    framed = []
    for image, boxes in zip(images, regions, strict=True):
        boxes = torch.tensor([list(b) for b in boxes], dtype=torch.float32).view(-1, 4)
        framed.append(boxes_to_model_frame(boxes, image.size, processor.image_processor).tolist())
    return {"region_boxes": region_boxes_tensor(framed).to(model.device)}
