import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cloc_mllm import box_ops


def test_conversions_round_trip():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 7.0], [0.1, 0.2, 0.3, 0.9]])
    assert torch.allclose(box_ops.box_xywh_to_xyxy(box_ops.box_xyxy_to_xywh(boxes)), boxes)
    assert torch.allclose(box_ops.box_cxcywh_to_xyxy(box_ops.box_xyxy_to_cxcywh(boxes)), boxes)


def test_iou_matches_pycocotools():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (6, 2))], axis=1)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    expected = mask_utils.iou(xywh.tolist(), xywh[::-1].tolist(), [0] * 6)
    got = box_ops.box_iou(torch.tensor(boxes), torch.tensor(boxes[::-1].copy()))
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    assert torch.allclose(
        box_ops.elementwise_box_iou(torch.tensor(boxes), torch.tensor(boxes)),
        torch.ones(6, dtype=torch.float64),
    )


def test_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    # IoU 0, hull area 3, union 2 -> GIoU = 0 - 1/3
    assert box_ops.elementwise_generalized_box_iou(a, b).item() == pytest.approx(-1 / 3)
    assert box_ops.elementwise_generalized_box_iou(a, a).item() == pytest.approx(1.0)


def test_nms_keeps_best_and_separate_groups():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert box_ops.nms(boxes, scores, 0.5).tolist() == [3, 2]
    groups = torch.tensor([0, 0, 0, 1])
    assert sorted(box_ops.batched_nms(boxes, scores, groups, 0.5).tolist()) == [0, 2, 3]


def test_sanitize_flags_bad_boxes():
    boxes = torch.tensor(
        [
            [0.1, 0.1, 0.5, 0.5],
            [0.5, 0.1, 0.2, 0.4],
            [float("nan"), 0, 1, 1],
            [-0.5, 0.2, 1.5, 0.8],
            [1.2, 1.2, 1.5, 1.5],
        ]
    )
    clamped, ok = box_ops.sanitize_boxes(boxes)
    assert ok.tolist() == [True, False, False, True, False]
    assert clamped[3].tolist() == pytest.approx([0.0, 0.2, 1.0, 0.8])


def test_roi_align_on_constant_and_ramp_maps():
    # A feature map equal to the x coordinate: RoIAlign over a box averages to the box's x centre.
    h = w = 8
    xs = (torch.arange(w) + 0.5) / w
    fmap = xs.expand(h, w)[None, None].repeat(1, 2, 1, 1)
    boxes = torch.tensor([[[0.25, 0.0, 0.75, 1.0], [0.0, 0.5, 0.5, 1.0]]])
    pooled = box_ops.roi_align(fmap, boxes, output_size=2, sampling_ratio=2)
    assert pooled.shape == (1, 2, 2, 2, 2)
    means = pooled.mean(dim=(-2, -1))[0, :, 0]
    assert means.tolist() == pytest.approx([0.5, 0.25], abs=1e-5)
    grad_boxes = boxes.clone().requires_grad_(True)
    box_ops.roi_align(fmap, grad_boxes, 2).sum().backward()
    assert grad_boxes.grad.abs().sum() > 0


def test_tokens_to_feature_map_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        box_ops.tokens_to_feature_map(torch.zeros(1, 10, 4))
