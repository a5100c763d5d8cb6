"""Boxes follow the pixels through every preprocessing mode, both ways."""

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil

from cloc_mllm.box_ops import box_iou
from cloc_mllm.data.transforms import (
    MODES,
    ImageTransform,
    boxes_from_model_frame,
    boxes_to_model_frame,
)

SIZE = 96


def _coloured_pixel_box(pixels: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """(1, 4) normalised bbox of the magenta pixels of a (3, S, S) processed image."""
    mean = torch.tensor(transform.processor.image_mean)[:, None, None]
    std = torch.tensor(transform.processor.image_std)[:, None, None]
    green = (pixels * std + mean)[1] * 255
    ys, xs = torch.nonzero(green < 64, as_tuple=True)  # magenta has no green; grey has 128
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32) / SIZE


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width, height", [(97, 61), (61, 97), (64, 64), (200, 50), (333, 500)])
def test_mapped_box_covers_the_same_pixels(mode, width, height):
    image = Image.new("RGB", (width, height), (128, 128, 128))
    x1, y1, x2, y2 = int(width * 0.3), int(height * 0.2), int(width * 0.62), int(height * 0.8)
    ImageDraw.Draw(image).rectangle((x1, y1, x2 - 1, y2 - 1), fill=(255, 0, 255))
    box = torch.tensor([[x1 / width, y1 / height, x2 / width, y2 / height]])
    transform = ImageTransform.from_size(SIZE, mode)
    out = transform(image, box)
    assert out.pixel_values.shape == (3, SIZE, SIZE)
    assert out.keep.tolist() == [True]
    assert box_iou(_coloured_pixel_box(out.pixel_values, transform), out.boxes).item() > 0.9
    # Back on the original image: the box itself, cut to the part of the image the model sees.
    window = boxes_from_model_frame(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (width, height), mode, SIZE)
    visible = torch.cat(
        [torch.maximum(box[:, :2], window[:, :2]), torch.minimum(box[:, 2:], window[:, 2:])], -1
    )
    torch.testing.assert_close(boxes_from_model_frame(out.boxes, (width, height), mode, SIZE), visible)


@pytest.mark.parametrize("mode", MODES)
def test_inverse_round_trip_on_random_boxes(mode):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 0.08 + 0.42
    boxes = torch.cat(
        [xy, xy + torch.rand(50, 2, generator=g) * 0.07 + 0.01], dim=-1
    )  # central: never cropped
    for size in [(97, 61), (61, 97), (300, 120)]:
        mapped, keep = boxes_to_model_frame(boxes, size, mode, SIZE)
        assert keep.all()
        torch.testing.assert_close(boxes_from_model_frame(mapped, size, mode, SIZE), boxes)


def test_pad_keeps_aspect_and_resize_keeps_normalised_boxes():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    padded, _ = boxes_to_model_frame(box, (200, 100), "pad", SIZE)
    torch.testing.assert_close(padded, torch.tensor([[0.0, 0.25, 1.0, 0.75]]))
    resized, _ = boxes_to_model_frame(box, (200, 100), "resize", SIZE)
    torch.testing.assert_close(resized, box)


def test_center_crop_clips_and_drops_boxes():
    # A 200x100 image: shortest side -> 64, so the crop keeps the middle half of the width.
    boxes = torch.tensor([[0.0, 0.2, 0.2, 0.8], [0.1, 0.2, 0.3, 0.8], [0.4, 0.2, 0.6, 0.8]])
    mapped, keep = boxes_to_model_frame(boxes, (200, 100), "center_crop", SIZE, min_visible=0.5)
    assert keep.tolist() == [False, False, True]  # fully out; 0.25 visible; inside
    assert (mapped >= 0).all() and (mapped <= 1).all()
    torch.testing.assert_close(mapped[2], torch.tensor([0.3, 0.2, 0.7, 0.8]))


def test_transform_from_checkpoint_processor_and_errors(tmp_path):
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path
    )
    transform = ImageTransform(CLIPImageProcessorPil.from_pretrained(tmp_path), mode="pad")
    out = transform(Image.new("RGB", (40, 20), (10, 20, 30)))
    assert out.pixel_values.shape == (3, 32, 32) and out.boxes.shape == (0, 4)
    # Padding is the processor mean colour, i.e. zero after normalisation.
    assert out.pixel_values[:, 0, :].abs().max() < 0.05
    with pytest.raises(ValueError, match="mode"):
        ImageTransform.from_size(32, "stretch")
    with pytest.raises(ValueError, match="crop_size"):
        ImageTransform(CLIPImageProcessorPil(crop_size={"height": 32, "width": 48}))
