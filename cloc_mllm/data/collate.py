"""Turn decoded shard samples into CLOC's training batch.

Each image contributes its caption (CLIP loss) and up to ``max_regions`` of its regions (region and
grounding losses). Regions are sampled without replacement from a generator seeded by (seed, epoch,
key), so a resumed run sees exactly the regions the interrupted one would have. Bad regions are never
trained on silently: each reason is counted in ``collator.stats``.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ..batch import CLOCBatch
from ..box_ops import sanitize_boxes
from .transforms import ImageTransform

# Padded region slots get the whole image as box and an empty text (bos, eos): finite inputs for any
# head that runs over all slots; ``region_mask`` False keeps them out of every loss.
PAD_BOX = (0.0, 0.0, 1.0, 1.0)


def _region_candidates(meta: dict, width: float, height: float, stats: Counter) -> tuple[Tensor, list[str]]:
    """Well-formed regions of one record as (R, 4) normalised xyxy (not yet sanitised) + phrases."""
    boxes, phrases = [], []
    regions = meta.get("regions") or []
    if not isinstance(regions, list):
        stats["regions_malformed"] += 1
        return torch.zeros(0, 4), []
    for region in regions:
        stats["regions_seen"] += 1
        box = region.get("box") if isinstance(region, dict) else None
        phrase = region.get("phrase") if isinstance(region, dict) else None
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) for v in box)
            or not isinstance(phrase, str)
            or not phrase.strip()
        ):
            stats["regions_malformed"] += 1
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        boxes.append((x1 / width, y1 / height, x2 / width, y2 / height))
        phrases.append(phrase.strip())
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), phrases


@dataclass
class CLOCCollator:
    """Callable over a list of ``(key, image, meta)`` (e.g. ``shards.ShardSample``) giving the
    ``CLOCBatch`` (cloc_mllm.batch: keys and shapes) that ``CLOCModel.forward`` takes; boxes are in
    the *model* frame (after the transform).

    ``meta`` is the shard json (docs/data_formats.md): pixel boxes relative to its ``width``/``height``.
    """

    tokenizer: PreTrainedTokenizerBase
    transform: ImageTransform
    max_regions: int = 4
    max_length: int = 77
    region_max_length: int = 32
    seed: int = 0
    epoch: int = 0
    stats: Counter = field(default_factory=Counter)

    def _rng(self, key: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, zlib.crc32(key.encode("utf-8"))])

    def _frame_size(self, key: str, image: Image.Image, meta: dict) -> tuple[float, float]:
        """The size the json's pixel boxes refer to: its width/height when sane, else the image's."""
        width, height = meta.get("width"), meta.get("height")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (width, height)):
            self.stats["image_size_missing"] += 1
            return image.size
        if (width, height) != image.size:
            self.stats["image_size_mismatch"] += 1
        return float(width), float(height)

    def _regions(self, key: str, image: Image.Image, meta: dict) -> tuple[Tensor, Tensor, list[str]]:
        """Pixels (3, S, S), up to M sampled model-frame boxes (k, 4) and their phrases for one sample."""
        boxes, phrases = _region_candidates(meta, *self._frame_size(key, image, meta), self.stats)
        clamped, valid = sanitize_boxes(boxes)
        changed = (clamped != boxes).any(-1) & valid
        self.stats["regions_invalid_box"] += int((~valid).sum())
        self.stats["regions_clamped"] += int(changed.sum())
        out = self.transform(image, clamped)
        usable = valid & out.keep
        self.stats["regions_cropped_out"] += int((valid & ~out.keep).sum())
        index = torch.nonzero(usable).flatten().tolist()
        chosen = sorted(self._rng(key).permutation(index)[: self.max_regions].tolist()) if index else []
        self.stats["regions_used"] += len(chosen)
        self.stats["regions_not_sampled"] += len(index) - len(chosen)
        if not chosen:
            self.stats["images_without_regions"] += 1
        return out.pixel_values, out.boxes[chosen], [phrases[i] for i in chosen]

    def __call__(self, samples: Sequence[Any]) -> CLOCBatch:
        if not samples:
            raise ValueError("CLOCCollator: empty batch")
        b, m = len(samples), self.max_regions
        pixels, captions = [], []
        region_boxes = torch.tensor(PAD_BOX).repeat(b, m, 1)
        region_mask = torch.zeros(b, m, dtype=torch.bool)
        region_texts = [""] * (b * m)
        for i, (key, image, meta, *_) in enumerate(samples):
            self.stats["images"] += 1
            caption = meta.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                self.stats["captions_empty"] += 1
                caption = ""
            captions.append(caption)
            pixel_values, boxes, phrases = self._regions(key, image, meta)
            pixels.append(pixel_values)
            k = len(phrases)
            region_boxes[i, :k] = boxes
            region_mask[i, :k] = True
            region_texts[i * m : i * m + k] = phrases
        text = self.tokenizer(
            captions, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        regions = self.tokenizer(
            region_texts,
            padding="longest",
            truncation=True,
            max_length=self.region_max_length,
            return_tensors="pt",
        )
        return CLOCBatch(
            pixel_values=torch.stack(pixels),
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            region_boxes=region_boxes,
            region_input_ids=regions["input_ids"].view(b, m, -1),
            region_attention_mask=regions["attention_mask"].view(b, m, -1),
            region_mask=region_mask,
        )
