"""Detector stage: box frames, the selection rule on known logits, and the real OWLv2 classes (tiny)."""

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Owlv2ImageProcessorPil

from cloc_mllm.box_ops import box_xyxy_to_cxcywh
from cloc_mllm.vesl import tiny
from cloc_mllm.vesl.detector import (
    PAD_SQUARE,
    STRETCH,
    OwlPredictor,
    RawDetections,
    Region,
    RegionDetector,
    boxes_to_pixels,
    select_regions,
)


def cxcywh(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


def test_boxes_to_pixels_frames():
    box = cxcywh([0.5, 0.25, 0.5, 0.5])  # xyxy (0.25, 0, 0.75, 0.5) of the frame
    # OWLv2: fractions of the padded 200 x 200 square; the bottom half is padding and gets clipped
    assert boxes_to_pixels(box, 200, 100, PAD_SQUARE).tolist() == [[50.0, 0.0, 150.0, 100.0]]
    # OWL-ViT v1: fractions of width and height
    assert boxes_to_pixels(box, 200, 100, STRETCH).tolist() == [[50.0, 0.0, 150.0, 50.0]]
    with pytest.raises(ValueError, match="unknown box frame"):
        boxes_to_pixels(box, 200, 100, "crop")


@pytest.mark.parametrize("size, rect", [((120, 60), (30, 10, 90, 40)), ((60, 120), (10, 70, 40, 110))])
def test_owlv2_processor_pads_bottom_right_and_mapping_undoes_it(size, rect):
    """Find a white rectangle in OWLv2's real preprocessed input and map its extent back."""
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=(255, 255, 255))
    side = 240  # 2x the longer side, so the rectangle's edges stay sharp
    pixels = Owlv2ImageProcessorPil(size={"height": side, "width": side})(
        image, return_tensors="pt"
    ).pixel_values
    white = pixels[0].mean(0) > 1.5  # (side, side) after CLIP normalisation
    rows, cols = white.any(1).nonzero().squeeze(1), white.any(0).nonzero().squeeze(1)
    found = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32) / side
    mapped = boxes_to_pixels(box_xyxy_to_cxcywh(found), *size, PAD_SQUARE)[0]
    assert mapped.tolist() == pytest.approx(rect, abs=1.0)
    stretched = boxes_to_pixels(box_xyxy_to_cxcywh(found), *size, STRETCH)[0]
    assert not torch.allclose(stretched, torch.tensor(rect, dtype=torch.float32), atol=5.0)


def test_select_regions_exact():
    raw = RawDetections(
        boxes=cxcywh(
            [0.25, 0.25, 0.2, 0.2],  # dog 0.881 -> (30, 30, 70, 70)
            [0.26, 0.25, 0.2, 0.2],  # dog 0.731, overlaps the first: suppressed
            [0.26, 0.25, 0.2, 0.2],  # same box, but cat 0.818: other query, kept
            [0.70, 0.20, 0.2, 0.2],  # best score 0.047 < 0.1
            [0.50, 0.75, 0.2, 0.2],  # lies in the padding below the 200 x 100 image
            [0.95, 0.40, 0.2, 0.1],  # cat 0.622, clipped at the right edge
        ),
        logits=torch.tensor([[2.0, -1.0], [1.0, -2.0], [-3.0, 1.5], [-3.0, -3.0], [3.0, 0.0], [0.0, 0.5]]),
    )
    regions = select_regions(raw, ["dog", "cat"], width=200, height=100, threshold=0.1, nms_iou=0.5)
    assert [(r.phrase, round(r.score, 4)) for r in regions] == [
        ("dog", 0.8808),
        ("cat", 0.8176),
        ("cat", 0.6225),
    ]
    assert regions[0].box == pytest.approx((30, 30, 70, 70), abs=1e-4)
    assert regions[1].box == pytest.approx((32, 30, 72, 70), abs=1e-4)
    assert regions[2].box == pytest.approx((170, 70, 200, 90), abs=1e-4)
    assert select_regions(raw, ["dog", "cat"], 200, 100, threshold=0.85) == regions[:1]


def test_select_regions_checks_query_count_and_rounds_json():
    raw = RawDetections(cxcywh([0.5, 0.5, 0.2, 0.2]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="2 query logits for 3 phrases"):
        select_regions(raw, ["a", "b", "c"], 10, 10)
    region = Region((1.23456, 2.0, 3.5, 4.0), "dog", 0.123456)
    assert region.to_json() == {"box": [1.23, 2.0, 3.5, 4.0], "phrase": "dog", "score": 0.1235}


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    return tiny.save_parts(tiny.owl_parts(), tmp_path_factory.mktemp("owl"))


def test_owl_predictor_drops_padded_queries(owl_dir):
    predictor = OwlPredictor.from_pretrained(owl_dir)
    a, b = Image.new("RGB", (90, 50), "red"), Image.new("RGB", (40, 70), "blue")
    together = predictor([a, b], [["red circle", "blue square", "star"], ["blue square"]])
    alone = predictor([b], [["blue square"]])
    num_boxes = (64 // 16) ** 2
    assert together[0].logits.shape == (num_boxes, 3) and together[1].logits.shape == (num_boxes, 1)
    assert together[1].frame == PAD_SQUARE
    torch.testing.assert_close(together[1].logits, alone[0].logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1].boxes, alone[0].boxes, atol=1e-5, rtol=1e-5)


def test_region_detector_end_to_end_with_tiny_owl(owl_dir):
    detector = RegionDetector(OwlPredictor.from_pretrained(owl_dir), threshold=0.5)
    image = Image.new("RGB", (100, 60), "gray")
    regions = detector([image], [["red circle", "blue square"]])[0]
    assert regions, "the tiny model's scores sit around 0.5, so some boxes pass"
    assert all(r.phrase in ("red circle", "blue square") and r.score > 0.5 for r in regions)
    assert all(0 <= r.box[0] < r.box[2] <= 100 and 0 <= r.box[1] < r.box[3] <= 60 for r in regions)
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    with pytest.raises(ValueError, match="at least one phrase"):
        detector([image], [[]])


def test_from_pretrained_rejects_other_models(tmp_path):
    path = tiny.save_parts(tiny.blip_parts(), tmp_path / "blip")
    with pytest.raises(ValueError, match="'blip' model; expected owlv2 or owlvit"):
        OwlPredictor.from_pretrained(path)
