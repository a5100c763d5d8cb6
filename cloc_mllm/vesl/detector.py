"""Open-vocabulary detection stage: phrases in, region labels (pixel boxes + phrase + score) out.

The model-specific part (:class:`OwlPredictor`) only produces raw per-box logits over the image's
queries; the paper's selection rule lives in :func:`select_regions` so it can be tested on known numbers:
a box is kept when its best query scores above the threshold, it is captioned with that query, and
boxes of the same query are de-duplicated by NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from cloc_mllm.box_ops import batched_nms, box_cxcywh_to_xyxy

# How the model's input frame relates to the original image. OWLv2 pads the image to a square at the
# bottom/right before resizing, so its normalised boxes are fractions of max(W, H); OWL-ViT v1 resizes
# (stretches) the image, so its boxes are fractions of W and H.
PAD_SQUARE = "pad_square"
STRETCH = "stretch"


@dataclass
class RawDetections:
    """One image's detector output before selection."""

    boxes: Tensor  # (P, 4) cxcywh, normalised to the model's input frame
    logits: Tensor  # (P, Q) one logit per box and text query
    frame: str = PAD_SQUARE


@dataclass(frozen=True)
class Region:
    """A pseudo label: ``box`` is xyxy in pixels of the original image."""

    box: tuple[float, float, float, float]
    phrase: str
    score: float

    def to_json(self) -> dict:
        """The shard json's region record (docs/data_formats.md); rounded so re-runs on other
        hardware write the same bytes."""
        return {"box": [round(v, 2) for v in self.box], "phrase": self.phrase, "score": round(self.score, 4)}


def boxes_to_pixels(boxes: Tensor, width: int, height: int, frame: str = PAD_SQUARE) -> Tensor:
    """(N, 4) normalised cxcywh in the model frame -> (N, 4) xyxy pixels, clipped to the original image."""
    if frame == PAD_SQUARE:
        side = max(width, height)
        scale = [side, side, side, side]
    elif frame == STRETCH:
        scale = [width, height, width, height]
    else:
        raise ValueError(f"unknown box frame {frame!r}; expected {PAD_SQUARE!r} or {STRETCH!r}")
    xyxy = box_cxcywh_to_xyxy(boxes.float()) * torch.tensor(scale, dtype=torch.float32)
    limit = xyxy.new_tensor([width, height, width, height])
    return torch.minimum(xyxy.clamp(min=0), limit)


def select_regions(
    raw: RawDetections,
    phrases: Sequence[str],
    width: int,
    height: int,
    threshold: float = 0.1,
    nms_iou: float = 0.5,
    min_size: float = 1.0,
) -> list[Region]:
    """Paper rule: best query per box, score > threshold, per-query NMS; boxes in original pixels.

    Boxes left thinner than ``min_size`` pixels after clipping (e.g. lying in OWLv2's padding) are dropped.
    Regions come back sorted by score, highest first.
    """
    if raw.logits.shape[-1] != len(phrases):
        raise ValueError(f"detector returned {raw.logits.shape[-1]} query logits for {len(phrases)} phrases")
    scores, labels = raw.logits.float().sigmoid().max(dim=-1)  # (P,), (P,)
    boxes = boxes_to_pixels(raw.boxes, width, height, raw.frame)
    keep = (scores > threshold) & ((boxes[:, 2:] - boxes[:, :2]) >= min_size).all(-1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = batched_nms(boxes, scores, labels, nms_iou)
    return [
        Region(box=tuple(boxes[i].tolist()), phrase=phrases[int(labels[i])], score=float(scores[i]))
        for i in kept.tolist()
    ]


Predictor = Callable[[list[Image.Image], list[list[str]]], list[RawDetections]]


class OwlPredictor:
    """OWLv2 (or OWL-ViT v1) with its processor; :meth:`from_pretrained` takes a hub id or a local dir."""

    def __init__(self, model, processor):
        model_type = model.config.model_type
        if model_type not in ("owlv2", "owlvit"):
            raise ValueError(f"detector is a {model_type!r} model; expected owlv2 or owlvit")
        self.frame = PAD_SQUARE if model_type == "owlv2" else STRETCH
        self.model, self.processor = model.eval(), processor

    @classmethod
    def from_pretrained(
        cls, model_id: str, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> OwlPredictor:
        from transformers import AutoConfig, AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

        model_type = AutoConfig.from_pretrained(model_id).model_type
        classes = {"owlv2": Owlv2ForObjectDetection, "owlvit": OwlViTForObjectDetection}
        if model_type not in classes:
            raise ValueError(f"detector {model_id!r} is a {model_type!r} model; expected owlv2 or owlvit")
        model = classes[model_type].from_pretrained(model_id, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(model_id))

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image], queries: list[list[str]]) -> list[RawDetections]:
        inputs = self.processor(text=queries, images=images, return_tensors="pt", truncation=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model(**inputs)  # logits (B, P, Qmax), pred_boxes (B, P, 4)
        # The processor pads every image's query list to Qmax with " "; drop those columns here rather
        # than trusting the model's padding mask (" " does not start with token id 0).
        return [
            RawDetections(
                out.pred_boxes[i].float().cpu(), out.logits[i, :, : len(q)].float().cpu(), self.frame
            )
            for i, q in enumerate(queries)
        ]


class RegionDetector:
    """Detector stage: (images, phrases per image) -> regions per image, batching the model call."""

    def __init__(self, predictor: Predictor, threshold: float = 0.1, nms_iou: float = 0.5):
        self.predictor, self.threshold, self.nms_iou = predictor, threshold, nms_iou

    def __call__(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Region]]:
        if any(not p for p in phrases):
            raise ValueError("every image handed to the detector needs at least one phrase")
        raws = self.predictor(images, phrases) if images else []
        return [
            select_regions(raw, p, im.width, im.height, self.threshold, self.nms_iou)
            for raw, p, im in zip(raws, phrases, images, strict=True)
        ]
