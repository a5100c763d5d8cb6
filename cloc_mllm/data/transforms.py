"""Image preprocessing through a CLIP image processor, with boxes mapped the same way as the pixels.

Every mode is an axis-aligned affine map of normalised coordinates, ``x' = x * sx + ox`` (and the same
for y), so boxes go to the model frame and back exactly (``BoxFrame``):

- ``resize``: squash to the square input. Normalised boxes do not change. Default for pretraining and
  grounding: nothing is cut off and no pixels are wasted on padding.
- ``pad``: pad to a square with the processor's mean colour (centred, like LLaVA's ``expand2square``),
  then resize. Keeps the aspect ratio; boxes shrink towards the centre on the short axis.
- ``center_crop``: CLIP's own recipe (shortest side to the input size, then a centre crop). Boxes are
  clipped to the crop; one that keeps less than ``min_visible`` of its area is dropped (``keep`` False)
  and callers count it. Never use it for grounding: referred objects can be cut away.

See docs/boxes.md for the conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from transformers import CLIPImageProcessorPil
from transformers.image_processing_utils import BaseImageProcessor

from ..box_ops import box_area

MODES = ("resize", "pad", "center_crop")


@dataclass(frozen=True)
class BoxFrame:
    """The affine map from normalised original-image coordinates to normalised model-input ones."""

    sx: float
    sy: float
    ox: float
    oy: float

    def _params(self, boxes: Tensor) -> tuple[Tensor, Tensor]:
        scale = boxes.new_tensor([self.sx, self.sy, self.sx, self.sy])
        offset = boxes.new_tensor([self.ox, self.oy, self.ox, self.oy])
        return scale, offset

    def to_model(self, boxes: Tensor) -> Tensor:
        """(..., 4) normalised xyxy on the original image -> (..., 4) on the model input (unclipped)."""
        scale, offset = self._params(boxes)
        return boxes * scale + offset

    def to_original(self, boxes: Tensor, clamp: bool = True) -> Tensor:
        """(..., 4) normalised xyxy on the model input -> (..., 4) on the original image.

        ``clamp`` keeps the result inside the image (a predicted box may reach into the padding).
        """
        scale, offset = self._params(boxes)
        out = (boxes - offset) / scale
        return out.clamp(0.0, 1.0) if clamp else out


def box_frame(width: int, height: int, mode: str, size: int) -> BoxFrame:
    """The box map of ``mode`` for a ``width`` x ``height`` image and a ``size`` x ``size`` input."""
    if mode == "resize":
        return BoxFrame(1.0, 1.0, 0.0, 0.0)
    if mode == "pad":
        side = max(width, height)
        left, top = (side - width) // 2, (side - height) // 2
        return BoxFrame(width / side, height / side, left / side, top / side)
    if mode == "center_crop":
        # Same integer arithmetic as transformers' shortest-edge resize and centre crop.
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return BoxFrame(new_w / size, new_h / size, -left / size, -top / size)
    raise ValueError(f"unknown image transform mode {mode!r}; expected one of {MODES}")


def boxes_to_model_frame(
    boxes: Tensor, image_size: tuple[int, int], mode: str, size: int, min_visible: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Map (K, 4) normalised xyxy boxes of a ``(width, height)`` image into the model input.

    Returns the boxes clipped to [0, 1] and a (K,) bool ``keep``: False where less than ``min_visible``
    of a box's area is left inside the input (only ``center_crop`` cuts anything).
    """
    frame = box_frame(*image_size, mode, size)
    mapped = frame.to_model(boxes)
    clipped = mapped.clamp(0.0, 1.0)
    before = box_area(mapped)
    visible = torch.where(before > 0, box_area(clipped) / before.clamp(min=1e-12), torch.zeros_like(before))
    return clipped, visible >= min_visible


def boxes_from_model_frame(boxes: Tensor, image_size: tuple[int, int], mode: str, size: int) -> Tensor:
    """Inverse of ``boxes_to_model_frame``: (K, 4) model-input boxes -> normalised boxes of the original
    ``(width, height)`` image, clamped to it. Evaluation scores boxes here."""
    return box_frame(*image_size, mode, size).to_original(boxes)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square canvas of its longer side (offsets as in ``box_frame``)."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


@dataclass
class TransformedImage:
    pixel_values: Tensor  # (3, size, size) normalised
    boxes: Tensor  # (K, 4) normalised xyxy in the model frame, clipped
    keep: Tensor  # (K,) bool: box still visible enough to train on
    frame: BoxFrame


class ImageTransform:
    """A CLIP image processor plus a geometry mode; one call maps an image and its boxes together.

    ``processor`` is any CLIP-style processor (``CLIPImageProcessor`` / ``CLIPImageProcessorPil``, from a
    checkpoint or built here); its crop size is the model's input size, its mean/std normalise pixels.
    """

    def __init__(self, processor: BaseImageProcessor, mode: str = "resize", min_visible: float = 0.5):
        if mode not in MODES:
            raise ValueError(f"unknown image transform mode {mode!r}; expected one of {MODES}")
        crop = processor.crop_size or {}
        height, width = crop.get("height"), crop.get("width")
        if height is None or height != width:
            raise ValueError(f"image processor crop_size={crop!r}: expected a square {{'height', 'width'}}")
        self.processor = processor
        self.mode = mode
        self.size = int(height)
        self.min_visible = min_visible
        self.fill = tuple(int(round(255 * m)) for m in processor.image_mean)

    @classmethod
    def from_size(cls, size: int = 224, mode: str = "resize", **processor_kwargs) -> ImageTransform:
        """A transform over a fresh ``CLIPImageProcessorPil`` with CLIP's mean/std at ``size``."""
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **processor_kwargs
        )
        return cls(processor, mode)

    def pixels(self, image: Image.Image) -> Tensor:
        """(3, size, size) normalised pixel values of one image under this mode."""
        image = image.convert("RGB")
        square = {"height": self.size, "width": self.size}
        if self.mode == "center_crop":
            kwargs = {"size": {"shortest_edge": self.size}, "do_center_crop": True, "crop_size": square}
        else:
            image = pad_to_square(image, self.fill) if self.mode == "pad" else image
            kwargs = {"size": square, "do_center_crop": False}
        return self.processor(images=image, return_tensors="pt", **kwargs)["pixel_values"][0]

    def __call__(self, image: Image.Image, boxes: Tensor | None = None) -> TransformedImage:
        """``boxes``: (K, 4) normalised xyxy on ``image``; None for an image without regions."""
        boxes = torch.zeros(0, 4) if boxes is None else boxes.to(torch.float32).reshape(-1, 4)
        mapped, keep = boxes_to_model_frame(boxes, image.size, self.mode, self.size, self.min_visible)
        frame = box_frame(*image.size, self.mode, self.size)
        return TransformedImage(self.pixels(image), mapped, keep, frame)
