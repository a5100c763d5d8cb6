"""Turning evaluation records into model inputs: images (unreadable ones flagged, never raised),
their sizes, the encoder's image transform and tokenised texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from cloc_mllm.data.images import annotated_rgb
from cloc_mllm.data.transforms import ImageTransform


class HasImage(Protocol):
    image_path: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageRef:
    """Just an image: a path and, when the annotation gives it, its size (0 = read from the file)."""

    image_path: str
    width: int = 0
    height: int = 0


def open_image(path: str | Path, size: Sequence[int] | None = None) -> Image.Image | None:
    """The RGB image in the frame of an annotation of ``size`` (width, height; default: upright, EXIF
    applied; ``data.images.annotated_rgb``), or None when the file is missing or unreadable (callers
    count it)."""
    try:
        with Image.open(path) as image:
            return annotated_rgb(image, size)
    except (FileNotFoundError, UnidentifiedImageError, OSError, ValueError):
        return None


def load_images(records: Sequence[HasImage]) -> tuple[list[Image.Image | None], list[list[int]]]:
    """Images of ``records`` and the (width, height) their boxes refer to.

    The annotation's size wins when it has one (pixel boxes are relative to it, and normalised
    coordinates are the same on a resized copy); otherwise the image's own size; [0, 0] if neither.
    """
    images, sizes = [], []
    for record in records:
        image = open_image(record.image_path, (record.width, record.height))
        images.append(image)
        if record.width > 0 and record.height > 0:
            sizes.append([record.width, record.height])
        else:
            sizes.append(list(image.size) if image is not None else [0, 0])
    return images, sizes


def encoder_transform(model, model_dir: str | Path | None = None, mode: str = "resize") -> ImageTransform:
    """The CLOC/CLIP image transform: the processor saved with the model when there is one, else CLIP
    normalisation at the tower's resolution. ``mode`` is ``resize`` or ``pad``; never crop for boxes."""
    from transformers import CLIPImageProcessorPil

    from cloc_mllm.modeling_cloc import default_image_processor

    if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessorPil.from_pretrained(str(model_dir))
        size = model.config.vision_config.image_size
        processor.crop_size = {"height": size, "width": size}
    else:
        processor = default_image_processor(model.config)
    return ImageTransform(processor, mode)


def normalised_boxes(boxes: Sequence[Sequence[float]], size: Sequence[int]) -> Tensor:
    """(K, 4) pixel xyxy on a (width, height) image -> (K, 4) normalised xyxy."""
    width, height = size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) / scale


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], model, device) -> dict[str, Tensor]:
    """Padded, truncated to the text tower's positions, on ``device``."""
    max_length = min(model.config.text_config.max_position_embeddings, tokenizer.model_max_length)
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def model_device(model) -> torch.device:
    return next(model.parameters()).device
