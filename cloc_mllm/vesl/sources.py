"""VESL inputs: WebDataset tars, an image folder, or a COCO / LLaVA json, split into work units.

A work unit becomes exactly one output shard, which is what makes runs idempotent and parallel: one tar
in -> one tar out; folders and json files are cut into chunks of ``shard_size`` images in sorted order.
Units are small picklable descriptions, so processes and Ray tasks can receive them.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class FileItem:
    """One image of a folder or json input, with what the input says about it."""

    key: str
    path: str
    caption: str = ""
    source: str = ""
    ground_truth: tuple[dict, ...] | None = None  # [{"box": pixel xyxy, "phrase": str}], None = unknown


@dataclass(frozen=True)
class WorkUnit:
    """The input of one output shard: a tar url, or a chunk of file items."""

    index: int
    origin: str
    items: tuple[FileItem, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.index:06d}"

    @property
    def is_tar(self) -> bool:
        return not self.items


@dataclass
class SourceRecord:
    """One input image before labelling; ``error`` names why it cannot be used (counted, not raised)."""

    key: str
    data: bytes | None
    caption: str = ""
    source: str = ""
    ground_truth: list[dict] | None = None
    error: str | None = None


def sanitize_key(name: str) -> str:
    """A WebDataset-safe key: no dots (they start the extension) and no path separators."""
    return re.sub(r"[^\w-]", "_", name)


def expand_tars(spec: str) -> list[str]:
    """Brace patterns, ``::``-joined lists and globs -> tar urls; local files must exist (the error names
    the first missing one)."""
    urls: list[str] = []
    for part in wds.shardlists.expand_urls(spec):
        remote = "://" in part or part.startswith("pipe:")
        matches = [part] if remote or not glob.has_magic(part) else sorted(glob.glob(part))
        if not matches:
            raise FileNotFoundError(f"input pattern {part!r} matches no file")
        urls.extend(matches)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"input tar {missing[0]!r} does not exist ({len(missing)} missing)")
    return urls


def folder_items(root: Path) -> list[FileItem]:
    """Every image under ``root`` in sorted order; a ``NAME.txt`` beside an image is its caption."""
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(root).with_suffix("")
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        items.append(FileItem(sanitize_key(str(rel)), str(path), caption, f"folder:{rel.as_posix()}"))
    return items


def coco_items(data: dict, image_root: Path, name: str) -> list[FileItem]:
    """All images of a COCO json: first caption (captions json) and non-crowd boxes (instances json)."""
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    captions: dict[int, str] = {}
    boxes: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        image_id = ann.get("image_id")
        if "caption" in ann:
            captions.setdefault(image_id, str(ann["caption"]).strip())
        if "bbox" in ann and not ann.get("iscrowd", 0) and ann.get("category_id") in categories:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w > 0 and h > 0:
                region = {"box": [x, y, x + w, y + h], "phrase": categories[ann["category_id"]]}
                boxes.setdefault(image_id, []).append(region)
    return [
        FileItem(
            key=sanitize_key(Path(img["file_name"]).stem),
            path=str(image_root / img["file_name"]),
            caption=captions.get(img["id"], ""),
            source=f"coco:{name}:{img['id']}",
            ground_truth=tuple(boxes.get(img["id"], [])) if categories else None,
        )
        for img in data["images"]
    ]


def llava_items(records: list, image_root: Path, name: str) -> list[FileItem]:
    """LLaVA conversations: the first answer is the caption (as in the LLaVA pretraining json)."""
    items = []
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise ValueError(f"{name}: record {n} is not a LLaVA conversation (no 'conversations')")
        answers = [t.get("value", "") for t in rec["conversations"] if t.get("from") == "gpt"]
        caption = answers[0].replace("<image>", "").strip() if answers else ""
        image = rec.get("image", "")
        key = sanitize_key(str(rec.get("id", Path(image).stem or n)))
        items.append(FileItem(key, str(image_root / image) if image else "", caption, f"llava:{name}:{key}"))
    return items


def json_items(path: Path, image_root: Path | None) -> list[FileItem]:
    data = json.loads(path.read_text(encoding="utf-8"))
    root = image_root or path.parent
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return coco_items(data, root, path.name)
    if isinstance(data, list):
        return llava_items(data, root, path.name)
    raise ValueError(f"{path}: neither COCO ('images' + 'annotations') nor LLaVA (a list of conversations)")


def plan_units(spec: str, shard_size: int = 1000, image_root: str | None = None) -> list[WorkUnit]:
    """The work units of an input spec: tar pattern, image folder, or COCO/LLaVA json file."""
    path = Path(spec)
    if path.is_dir() or (path.suffix == ".json" and path.is_file()):
        items = folder_items(path) if path.is_dir() else json_items(path, image_root and Path(image_root))
        if not items:
            raise ValueError(f"input {spec!r} holds no images")
        chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
        return [WorkUnit(i, spec, tuple(chunk)) for i, chunk in enumerate(chunks)]
    return [WorkUnit(i, url) for i, url in enumerate(expand_tars(spec))]


def _tar_record(sample: dict, url: str) -> SourceRecord:
    key = sample["__key__"]
    data = next((sample[k] for k in TAR_IMAGE_KEYS if k in sample), None)
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return SourceRecord(key, data, error="bad_json")
    caption = str(meta.get("caption") or sample.get("txt", b"").decode("utf-8", "replace")).strip()
    record = SourceRecord(key, data, caption, str(meta.get("source") or f"tar:{Path(url).name}"))
    if isinstance(meta.get("regions"), list):
        try:
            record.ground_truth = [
                {"box": list(r["box"]), "phrase": str(r["phrase"])} for r in meta["regions"]
            ]
        except (KeyError, TypeError):
            record.error = "bad_json"
    if data is None and record.error is None:
        record.error = "missing_image"
    return record


def read_unit(unit: WorkUnit) -> Iterator[SourceRecord]:
    """The records of a unit, in order. A broken tar raises with its url; a bad record is flagged."""
    if unit.is_tar:
        pipeline = wds.DataPipeline(wds.SimpleShardList([unit.origin]), wds.tarfile_to_samples())
        try:
            for sample in pipeline:
                yield _tar_record(sample, unit.origin)
        except Exception as err:  # webdataset/tarfile errors name neither the file nor the cause plainly
            raise RuntimeError(f"cannot read input tar {unit.origin}: {err}") from err
        return
    for item in unit.items:
        gt = None if item.ground_truth is None else list(item.ground_truth)
        path = Path(item.path) if item.path else None
        if path is None or not path.is_file():
            yield SourceRecord(item.key, None, item.caption, item.source, gt, error="missing_image")
        else:
            yield SourceRecord(item.key, path.read_bytes(), item.caption, item.source, gt)
