"""Flickr30k Entities: phrase grounding records from ``Annotations/*.xml`` + ``Sentences/*.txt``.

Sentences mark phrases inline as ``[/EN#18/people A child]``; the image's xml lists boxes per phrase
id, or flags the phrase as having no box (``nobndbox``) or being the whole scene (``scene``). Those
phrases cannot be grounded to a box, so they are counted, not returned, as in the published protocols.

Boxes are read exactly as the dataset's own reader does (``get_annotations`` in
github.com/BryanPlummer/flickr30k_entities ``flickr30k_entities_utils.py``, commit b233c8d): every
``<name>`` of an ``<object>`` gets its box, and all four xml numbers (1-based pixel indices, VOC style)
lose 1, ``(xmin - 1, ymin - 1, xmax - 1, ymax - 1)``, used as continuous xyxy. So ``x2`` is the index
of the box's last pixel column, one pixel short of its pixel set: that is the ground truth every score
on the dataset is computed against, so it is ours too (docs/boxes.md, docs/evaluation.md).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

OFFICIAL_IMAGES = {"train": 29783, "val": 1000, "test": 1000}
IMAGE_SUBDIRS = ("flickr30k-images", "images")
_PHRASE = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]*)\]")


@dataclass(frozen=True)
class FlickrPhrase:
    """One phrase of one sentence with its ground-truth boxes (pixel xyxy, the dataset reader's)."""

    image_id: str
    sentence: str
    phrase: str
    phrase_id: str
    boxes: list[tuple[float, float, float, float]]
    phrase_type: str = ""
    sentence_index: int = 0
    image_path: str = ""
    width: int = 0
    height: int = 0


@dataclass
class _ImageAnnotation:
    width: int
    height: int
    boxes: dict[str, list[tuple[float, float, float, float]]]
    no_box: set[str]
    scene: set[str]


def parse_sentence(line: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``"[/EN#1/people A man] runs"`` -> ("A man runs", [("1", "people", "A man")])."""
    phrases = [(m.group(1), m.group(2), m.group(3).strip()) for m in _PHRASE.finditer(line)]
    plain = " ".join(_PHRASE.sub(lambda m: m.group(3), line).split())
    return plain, phrases


def parse_annotation(path: Path) -> _ImageAnnotation:
    """Boxes per phrase id from one xml, plus the ids flagged as no-box or scene."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    width = int(size.findtext("width", "0")) if size is not None else 0
    height = int(size.findtext("height", "0")) if size is not None else 0
    ann = _ImageAnnotation(width, height, {}, set(), set())
    for obj in root.iter("object"):
        ids = [name.text.strip() for name in obj.findall("name") if name.text]
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            box = tuple(float(bndbox.findtext(k, "0")) - 1 for k in ("xmin", "ymin", "xmax", "ymax"))
            for pid in ids:
                ann.boxes.setdefault(pid, []).append(box)
            continue
        # Like the dataset's reader: the two flags are independent, an object may carry both.
        if int(obj.findtext("nobndbox") or 0) > 0:
            ann.no_box.update(ids)
        if int(obj.findtext("scene") or 0) > 0:
            ann.scene.update(ids)
    return ann


def default_image_dir(root: Path) -> Path:
    """The first of ``flickr30k-images/``, ``images/`` that exists under ``root`` (the former if none)."""
    for name in IMAGE_SUBDIRS:
        if (root / name).is_dir():
            return root / name
    return root / IMAGE_SUBDIRS[0]


def load_flickr30k_entities(
    root: str | Path,
    split: str = "test",
    image_dir: str | Path | None = None,
    stats: Counter | None = None,
) -> list[FlickrPhrase]:
    """One record per (sentence, phrase) that has at least one box, for the images in ``{split}.txt``.

    Counted in ``stats`` and the log line: phrases without a box, scene phrases, phrases missing
    from the xml, zero-area boxes, images whose xml or sentence file is missing.
    """
    root = Path(root)
    split_file = root / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file}: missing; expected the Flickr30k Entities layout")
    image_ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(root)
    skipped: Counter = Counter()
    records: list[FlickrPhrase] = []
    n_sentences = 0
    for image_id in image_ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        txt_path = root / "Sentences" / f"{image_id}.txt"
        if not xml_path.is_file() or not txt_path.is_file():
            skipped["missing_annotation_or_sentences"] += 1
            continue
        ann = parse_annotation(xml_path)
        lines = [line for line in txt_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        n_sentences += len(lines)
        for index, line in enumerate(lines):
            sentence, phrases = parse_sentence(line)
            for phrase_id, phrase_type, phrase in phrases:
                boxes = _usable_boxes(phrase_id, ann, skipped)
                if boxes:
                    records.append(
                        FlickrPhrase(
                            image_id=image_id,
                            sentence=sentence,
                            phrase=phrase,
                            phrase_id=phrase_id,
                            boxes=boxes,
                            phrase_type=phrase_type,
                            sentence_index=index,
                            image_path=str(image_dir / f"{image_id}.jpg"),
                            width=ann.width,
                            height=ann.height,
                        )
                    )
    _log_counts(split, len(image_ids), n_sentences, records, skipped)
    if stats is not None:
        stats.update(skipped)
    return records


def _usable_boxes(phrase_id: str, ann: _ImageAnnotation, skipped: Counter) -> list:
    boxes = ann.boxes.get(phrase_id, [])
    if not boxes:
        if phrase_id in ann.scene:
            skipped["phrase_scene"] += 1
        elif phrase_id in ann.no_box:
            skipped["phrase_no_box"] += 1
        else:
            skipped["phrase_not_annotated"] += 1  # includes "notvisual" phrases (id 0)
        return []
    good = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    skipped["zero_area_box"] += len(boxes) - len(good)
    if not good:
        skipped["phrase_only_zero_area_boxes"] += 1
    return good


def _log_counts(split: str, n_images: int, n_sentences: int, records: list, skipped: Counter) -> None:
    n_boxes = sum(len(r.boxes) for r in records)
    line = (
        f"flickr30k_entities {split}: {n_images} images, {n_sentences} sentences, "
        f"{len(records)} phrases with boxes, {n_boxes} boxes"
    )
    if any(skipped.values()):
        line += f"; skipped {dict(+skipped)}"
    official = OFFICIAL_IMAGES.get(split)
    if official is not None and official != n_images:
        logger.warning(
            "%s -- the official split has %d images (incomplete download or a custom set)", line, official
        )
    else:
        logger.info(line)
