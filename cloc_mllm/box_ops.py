"""Box geometry in plain torch: conversions, IoU / GIoU, NMS and RoIAlign.

torchvision is not a dependency (its PyPI wheels do not load beside every torch build), so the few
operators the library needs live here. Boxes are ``xyxy`` unless a name says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) ``x, y, w, h`` (COCO) -> (..., 4) ``x1, y1, x2, y2``."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) ``x1, y1, x2, y2`` -> (..., 4) ``x, y, w, h``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre/size -> (..., 4) corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) centre/size."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area; inverted boxes have area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise (N, M) intersection and union areas."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: (N, 4), (M, 4) xyxy -> (N, M). A pair whose union is empty has IoU 0."""
    inter, union = _intersection_union(boxes1, boxes2)
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matching rows: (..., 4), (..., 4) -> (...)."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of matching rows (..., 4) -> (...), in [-1, 1]; differentiable, used as a loss."""
    iou = elementwise_box_iou(boxes1, boxes2)
    lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    lt_i = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb_i = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb_i - lt_i).clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    return iou - (hull - union) / hull.clamp(min=1e-12)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression. (N, 4) xyxy, (N,) -> kept indices, highest score first."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    ious = box_iou(boxes[order], boxes[order])
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= ious[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (e.g. per text query): boxes of different groups never suppress each other."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # Shift each group far apart so one NMS pass handles all groups.
    offset = groups.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def sanitize_boxes(boxes: Tensor, min_size: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Clamp normalised xyxy boxes (..., 4) to [0, 1] and flag the usable ones.

    Returns the clamped boxes and a (...) bool mask that is False for NaN/inf boxes and for boxes
    whose clamped width or height is below ``min_size`` (inverted, empty or fully outside the image).
    """
    finite = torch.isfinite(boxes).all(-1)
    clamped = torch.nan_to_num(boxes, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    wide = (clamped[..., 2] - clamped[..., 0]) >= min_size
    tall = (clamped[..., 3] - clamped[..., 1]) >= min_size
    return clamped, finite & wide & tall


def roi_align(
    features: Tensor, boxes: Tensor, output_size: int | Sequence[int], sampling_ratio: int = 2
) -> Tensor:
    """RoIAlign (aligned=True) over a batch of feature maps, in plain torch.

    features: (B, C, H, W); boxes: (B, K, 4) normalised xyxy in [0, 1]
    -> (B, K, C, oh, ow). Each output cell averages ``sampling_ratio``² bilinear samples, as in
    Mask R-CNN's RoIAlign, computed with ``grid_sample`` so it runs on any device and backpropagates.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    b, k = boxes.shape[:2]
    s = sampling_ratio
    # Sample positions inside each box, in [0, 1]: cell centres of an (oh*s, ow*s) grid.
    ty = (torch.arange(oh * s, device=boxes.device, dtype=features.dtype) + 0.5) / (oh * s)
    tx = (torch.arange(ow * s, device=boxes.device, dtype=features.dtype) + 0.5) / (ow * s)
    x1, y1, x2, y2 = boxes.to(features.dtype).unbind(-1)  # (B, K)
    ys = y1[..., None] + (y2 - y1)[..., None] * ty  # (B, K, oh*s)
    xs = x1[..., None] + (x2 - x1)[..., None] * tx  # (B, K, ow*s)
    grid = torch.stack(
        [xs[:, :, None, :].expand(-1, -1, oh * s, -1), ys[:, :, :, None].expand(-1, -1, -1, ow * s)],
        dim=-1,
    )  # (B, K, oh*s, ow*s, 2) in [0, 1]
    grid = grid.reshape(b, k * oh * s, ow * s, 2) * 2 - 1  # grid_sample wants [-1, 1]
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.reshape(b, -1, k, oh, s, ow, s).mean(dim=(4, 6))  # (B, C, K, oh, ow)
    return sampled.permute(0, 2, 1, 3, 4)


def tokens_to_feature_map(tokens: Tensor) -> Tensor:
    """(B, N, C) patch tokens of a square grid (no CLS) -> (B, C, h, w)."""
    b, n, c = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"expected a square number of patch tokens, got {n}")
    return tokens.transpose(1, 2).reshape(b, c, side, side)
