"""Dense linear probes: what a tower's patch tokens say about *what* lies under each patch and *where*
the patch is.

Why a second view next to region recognition: an MLLM never sees CLOC's Prompter or text tower. It
reads the tower's patch tokens (LLaVA's ``mm_vision_select_layer``) through a projector it trains
itself. Zero-shot region recognition measures how well region embeddings line up with *text*; a
linear probe trained on the patch tokens measures what a trained projector can read out of them --
the object under the patch (to find "the red circle") and the patch's place in the grid (to write its
box). A tower can win the first by a wide margin and the second by little, and then an MLLM built on
it gains little in grounding.

Labels come from COCO-format boxes: a patch whose centre lies in an object's box is labelled with that
object's class (the smallest such box wins), else background. Probes are fitted on one split and
scored on another; numbers are top-1 accuracies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cloc_mllm.box_ops import box_area
from cloc_mllm.data.coco import CocoDetection
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval.encoder import image_batches, in_eval_mode
from cloc_mllm.eval.inputs import model_device


@dataclass(frozen=True)
class ProbeImage:
    """One image and its objects: pixel xyxy boxes on the original image and class indices."""

    image_path: str
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    classes: tuple[int, ...]


def probe_images(detection: CocoDetection, limit: int | None = None) -> list[ProbeImage]:
    """Group a detection set's regions by image (first ``limit`` images, in annotation order)."""
    grouped: dict[str, list] = defaultdict(list)
    for region in detection.regions:
        grouped[region.image_path].append(region)
    images = [
        ProbeImage(
            path, rs[0].width, rs[0].height, tuple(r.box for r in rs), tuple(r.category_index for r in rs)
        )
        for path, rs in grouped.items()
    ]
    return images[:limit] if limit else images


def patch_labels(boxes: Tensor, classes: Tensor, grid: int) -> Tensor:
    """Class + 1 of the smallest box holding each patch centre, 0 = background.

    boxes (K, 4) normalised xyxy in the model frame, classes (K,) -> (grid * grid,) in raster order.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(grid * grid, dtype=torch.long)
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # (N, 1)
    inside = (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])  # (N, K)
    area = torch.where(inside, box_area(boxes).unsqueeze(0), torch.inf)  # (N, K)
    smallest = area.argmin(dim=1)
    return torch.where(inside.any(dim=1), classes[smallest] + 1, 0)


@torch.no_grad()
def patch_tokens(
    model, images: Sequence[ProbeImage], transform: ImageTransform, layers: Sequence[int], batch_size: int
) -> tuple[dict[int, Tensor], Tensor]:
    """Per layer (n * N, C) patch tokens (no CLS) of the readable images, and their (n * N,) labels.

    ``layers`` index the vision tower's hidden states as LLaVA's ``mm_vision_select_layer`` does.
    """
    device, tower, grid = model_device(model), model.vision_model, model.config.num_patches_per_side
    tokens: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    labels = []
    for indices, pixels, outs, _ in image_batches(images, transform, batch_size, boxes=lambda im: im.boxes):
        hidden = tower(pixel_values=pixels.to(device, model.dtype), output_hidden_states=True).hidden_states
        for layer in layers:
            tokens[layer].append(hidden[layer][:, 1:].float().cpu().flatten(0, 1))
        for index, out in zip(indices, outs, strict=True):
            classes = torch.tensor(images[index].classes, dtype=torch.long)
            labels.append(patch_labels(out.boxes[out.keep], classes[out.keep], grid))
    width = tower.config.hidden_size
    flat = {layer: torch.cat(parts) if parts else torch.zeros(0, width) for layer, parts in tokens.items()}
    return flat, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def fit_linear_probe(
    features: Tensor, targets: Tensor, num_classes: int, steps: int = 300, lr: float = 1e-2, seed: int = 0
) -> torch.nn.Module:
    """A standardised linear classifier (features (M, C) -> num_classes), full-batch Adam.

    The features are standardised once; the returned module applies the same standardisation to new ones.
    """
    generator = torch.Generator().manual_seed(seed)
    standardise = _Standardise(features.mean(0), features.std(0).clamp_min(1e-5))
    standardised = standardise(features)
    linear = torch.nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimiser = torch.optim.Adam(linear.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            F.cross_entropy(linear(standardised), targets).backward()
            optimiser.step()
    return torch.nn.Sequential(standardise, linear).eval()


class _Standardise(torch.nn.Module):
    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@in_eval_mode
def patch_probe(
    model,
    train: CocoDetection,
    test: CocoDetection,
    transform: ImageTransform,
    layers: Sequence[int] = (-1, -2),
    train_images: int = 500,
    test_images: int | None = None,
    batch_size: int = 32,
    steps: int = 300,
) -> dict:
    """Per layer: object-patch class accuracy (the class under patches that lie on an object; chance
    ``1 / (classes + 1)``), all-patch class accuracy (background included) and grid-position accuracy
    (which of the N cells a token comes from; chance ``1 / N``)."""
    if train.categories != test.categories:
        raise ValueError("patch probe: the train and test detection sets have different category lists")
    grid_cells = model.config.num_patches_per_side**2
    num_classes = len(train.categories) + 1
    fit_tokens, fit_labels = patch_tokens(
        model, probe_images(train, train_images), transform, layers, batch_size
    )
    test_tokens, test_labels = patch_tokens(
        model, probe_images(test, test_images), transform, layers, batch_size
    )
    if fit_labels.numel() == 0 or test_labels.numel() == 0:
        raise ValueError("patch probe: no readable images in the train or the test split")
    fit_cells = torch.arange(grid_cells).repeat(fit_labels.numel() // grid_cells)
    test_cells = torch.arange(grid_cells).repeat(test_labels.numel() // grid_cells)
    on_object = test_labels > 0
    results: dict = {
        "train_patches": fit_labels.numel(),
        "test_patches": test_labels.numel(),
        "object_patch_fraction": on_object.float().mean().item(),
        "classes": num_classes,
        "grid_cells": grid_cells,
        "layers": {},
    }
    for layer in layers:
        classes = fit_linear_probe(fit_tokens[layer], fit_labels, num_classes, steps)
        cells = fit_linear_probe(fit_tokens[layer], fit_cells, grid_cells, steps)
        class_hit = (classes(test_tokens[layer]).argmax(-1) == test_labels).float()
        cell_hit = (cells(test_tokens[layer]).argmax(-1) == test_cells).float()
        results["layers"][str(layer)] = {
            "object_class_acc": class_hit[on_object].mean().item() if on_object.any() else None,
            "all_class_acc": class_hit.mean().item(),
            "position_acc": cell_hit.mean().item(),
        }
    return results
