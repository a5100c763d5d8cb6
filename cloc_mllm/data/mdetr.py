"""MDETR-style referring-expression json (``final_refcoco_val.json`` and friends).

A COCO-format file where every "image" entry is one expression (``caption``) over one real image
(``original_img_id`` / ``original_id``) and its annotation holds the referred box. Read into the same
:class:`~cloc_mllm.data.refer.RefRecord` as the refer layout, one record per expression.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from cloc_mllm.data.refer import RefRecord

logger = logging.getLogger(__name__)


def load_mdetr_refexp(
    json_path: str | Path, image_dir: str | Path, stats: Counter | None = None
) -> list[RefRecord]:
    """One record per expression; entries without a box, with a zero-area box or no caption are counted."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    boxes: dict[int, dict] = {}
    for ann in data.get("annotations", []):
        boxes.setdefault(ann["image_id"], ann)  # the referred object is the entry's first annotation
    categories = {cat["id"]: cat["name"] for cat in data.get("categories", [])}
    skipped: Counter = Counter()
    records = []
    for entry in data.get("images", []):
        ann = boxes.get(entry["id"])
        caption = str(entry.get("caption", "")).strip()
        if ann is None:
            skipped["no_box"] += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            skipped["zero_area_box"] += 1
            continue
        if not caption:
            skipped["no_sentence"] += 1
            continue
        records.append(
            RefRecord(
                ref_id=int(entry["id"]),
                image_id=int(entry.get("original_img_id", entry.get("original_id", entry["id"]))),
                file_name=entry["file_name"],
                box=(x, y, x + w, y + h),
                sentences=[caption],
                category=categories.get(ann.get("category_id"), "object"),
                ann_id=int(ann.get("original_id", ann.get("id", -1))),
                split=json_path.stem,
                image_path=str(Path(image_dir) / entry["file_name"]),
                width=int(entry.get("width", 0)),
                height=int(entry.get("height", 0)),
            )
        )
    suffix = f"; skipped {dict(skipped)}" if skipped else ""
    logger.info("%s: %d expressions%s", json_path.name, len(records), suffix)
    if stats is not None:
        stats.update(skipped)
    return records
