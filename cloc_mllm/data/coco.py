"""COCO-format json: detection boxes (region recognition) and captions (image-text retrieval).

Plain json reading rather than ``pycocotools.COCO``: evaluation needs every bad annotation counted by
kind (crowd, zero area, unknown image or category), which the COCO API silently indexes past.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoRegion:
    """One annotated object: pixel xyxy on the original image and its class."""

    image_id: int
    image_path: str
    box: tuple[float, float, float, float]
    category: str
    category_index: int  # position in CocoDetection.categories
    width: int = 0
    height: int = 0


@dataclass
class CocoDetection:
    categories: list[str]  # class names, in category-id order
    regions: list[CocoRegion] = field(default_factory=list)


@dataclass(frozen=True)
class CaptionedImage:
    image_id: int
    image_path: str
    captions: list[str]
    width: int = 0
    height: int = 0


def _read(json_path: str | Path) -> dict:
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing COCO-format json")
    data = json.loads(path.read_text())
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{path}: not COCO format, no {key!r} list")
    return data


def _finish(name: str, kept: int, what: str, skipped: Counter, stats: Counter | None) -> None:
    suffix = f"; skipped {dict(skipped)}" if skipped else ""
    logger.info("%s: %d %s%s", name, kept, what, suffix)
    if stats is not None:
        stats.update(skipped)


def load_coco_detection(
    json_path: str | Path, image_dir: str | Path, stats: Counter | None = None
) -> CocoDetection:
    """Every non-crowd box with positive area; crowd, zero-area, unknown image/category are counted."""
    data = _read(json_path)
    if "categories" not in data:
        raise ValueError(f"{json_path}: a detection json needs a 'categories' list")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    images = {img["id"]: img for img in data["images"]}
    result = CocoDetection(categories=[c["name"] for c in cats])
    skipped: Counter = Counter()
    for ann in data["annotations"]:
        image = images.get(ann.get("image_id"))
        x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        if image is None:
            skipped["unknown_image"] += 1
        elif ann.get("category_id") not in index:
            skipped["unknown_category"] += 1
        elif ann.get("iscrowd", 0):
            skipped["crowd"] += 1
        elif w <= 0 or h <= 0:
            skipped["zero_area_box"] += 1
        else:
            result.regions.append(
                CocoRegion(
                    image_id=int(image["id"]),
                    image_path=str(Path(image_dir) / image["file_name"]),
                    box=(x, y, x + w, y + h),
                    category=result.categories[index[ann["category_id"]]],
                    category_index=index[ann["category_id"]],
                    width=int(image.get("width", 0)),
                    height=int(image.get("height", 0)),
                )
            )
    _finish(Path(json_path).name, len(result.regions), "boxes", skipped, stats)
    return result


def load_coco_captions(
    json_path: str | Path, image_dir: str | Path, stats: Counter | None = None
) -> list[CaptionedImage]:
    """Images with their captions, in image order; captions of unknown images and empty ones are counted."""
    data = _read(json_path)
    captions: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
    skipped: Counter = Counter()
    for ann in data["annotations"]:
        text = str(ann.get("caption", "")).strip()
        if ann.get("image_id") not in captions:
            skipped["unknown_image"] += 1
        elif not text:
            skipped["empty_caption"] += 1
        else:
            captions[ann["image_id"]].append(text)
    result = []
    for img in data["images"]:
        if not captions[img["id"]]:
            skipped["image_without_caption"] += 1
            continue
        result.append(
            CaptionedImage(
                image_id=int(img["id"]),
                image_path=str(Path(image_dir) / img["file_name"]),
                captions=captions[img["id"]],
                width=int(img.get("width", 0)),
                height=int(img.get("height", 0)),
            )
        )
    _finish(Path(json_path).name, len(result), "captioned images", skipped, stats)
    return result
