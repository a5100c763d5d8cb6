"""Writers of the synthetic world, one per on-disk format of docs/data_formats.md.

Each writer takes finished ``WorldSample``s (all randomness already spent) and only formats them, so
every layout describes the same images, boxes and sentences. Every file is written to a temporary name
and moved into place (``os.replace``), so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import webdataset as wds

from cloc_mllm.atomic_io import atomic_path, write_bytes_atomic

from .synthetic_scene import Category, Scene
from .synthetic_text import Mention, Segment

REFER_DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


@dataclass
class WorldSample:
    """One image of the world with every text about it. ``refs[dataset]`` lists (object index,
    sentences); ``flickr_sentences`` are segment lists; ``conversation`` is (question, answer) pairs;
    ``region_texts[i]`` is object i's text in the pretraining shards (its phrase or a referring sentence)."""

    split: str
    index: int
    key: str
    image_id: int
    scene: Scene
    jpeg: bytes
    caption: str
    phrases: list[str]
    refs: dict[str, list[tuple[int, list[str]]]]
    flickr_sentences: list[list[Segment]]
    conversation: list[tuple[str, str]]
    region_texts: list[str]

    def box_xywh(self, i: int) -> list[int]:
        x1, y1, x2, y2 = self.scene.objects[i].box
        return [x1, y1, x2 - x1, y2 - y1]

    def ann_id(self, i: int) -> int:
        return self.image_id * 100 + i


class FormatWriter(Protocol):
    """What ``write_world`` needs of a format: take samples one by one, then finish and count."""

    def add(self, sample: WorldSample) -> None: ...

    def close(self) -> dict[str, int]: ...


def write_json_atomic(path: Path, obj: object) -> None:
    write_bytes_atomic(path, json.dumps(obj, sort_keys=True).encode("utf-8"))


def place_image(src: Path, dst: Path) -> None:
    """Put the already written JPEG at ``dst`` too: a hard link where the filesystem allows, else a copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


class ImageFolderWriter:
    """``out/images/{split}/KEY.jpg``: the one encoded copy every other layout links to."""

    def __init__(self, out: Path):
        self.root = out / "images"
        self.counts: Counter[str] = Counter()

    def path(self, sample: WorldSample) -> Path:
        return self.root / sample.split / f"{sample.key}.jpg"

    def add(self, sample: WorldSample) -> None:
        write_bytes_atomic(self.path(sample), sample.jpeg)
        self.counts[sample.split] += 1

    def close(self) -> dict[str, int]:
        return dict(self.counts)


def shard_record(sample: WorldSample) -> dict:
    """The pretraining shard json of docs/data_formats.md (boxes in pixels, ground truth scored 1.0)."""
    regions = [
        {"box": list(o.box), "phrase": text, "score": 1.0}
        for o, text in zip(sample.scene.objects, sample.region_texts, strict=True)
    ]
    return {
        "caption": sample.caption,
        "width": sample.scene.width,
        "height": sample.scene.height,
        "regions": regions,
        "source": "synthetic",
    }


class ShardWriter:
    """``out/shards/{split}/{000000..}.tar`` WebDataset shards of ``KEY.jpg`` + ``KEY.json``."""

    def __init__(self, out: Path, images_per_shard: int):
        self.root = out / "shards"
        self.per_shard = images_per_shard
        self.open: dict[str, tuple[wds.TarWriter, Path, Path]] = {}
        self.samples: Counter[str] = Counter()
        self.shards: Counter[str] = Counter()

    def _writer(self, split: str) -> wds.TarWriter:
        if self.samples[split] % self.per_shard == 0:
            self._finish(split)
            final = self.root / split / f"{self.shards[split]:06d}.tar"
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            # mtime fixed so the same seed gives byte-identical shards.
            self.open[split] = (wds.TarWriter(str(tmp), encoder=False, mtime=0.0), tmp, final)
            self.shards[split] += 1
        return self.open[split][0]

    def _finish(self, split: str) -> None:
        if split in self.open:
            writer, tmp, final = self.open.pop(split)
            writer.close()
            os.replace(tmp, final)

    def add(self, sample: WorldSample) -> None:
        record = json.dumps(shard_record(sample), sort_keys=True).encode("utf-8")
        self._writer(sample.split).write({"__key__": sample.key, "jpg": sample.jpeg, "json": record})
        self.samples[sample.split] += 1

    def close(self) -> dict[str, int]:
        for split in list(self.open):
            self._finish(split)
        counts = {f"{split}_samples": n for split, n in self.samples.items()}
        counts.update({f"{split}_shards": n for split, n in self.shards.items()})
        return counts


def _refer_split(sample: WorldSample, split_by: str) -> str:
    """unc: test images go to testA or testB by image id parity; umd keeps train/val/test."""
    if sample.split != "test" or split_by == "umd":
        return sample.split
    return "testA" if sample.image_id % 2 == 0 else "testB"


class ReferWriter:
    """The refer API layout: ``refer/{refcoco,refcoco+,refcocog}/instances.json`` + ``refs(unc|umd).p``,
    images at ``refer/images/mscoco/images/train2014/COCO_train2014_%012d.jpg``."""

    def __init__(self, out: Path, images: ImageFolderWriter, cats: list[Category]):
        self.root = out / "refer"
        self.images = images
        self.coco = _CocoTables(cats)
        self.refs: dict[str, list[dict]] = {name: [] for name in REFER_DATASETS}
        self.counts: Counter[str] = Counter()

    @staticmethod
    def file_name(image_id: int) -> str:
        return f"COCO_train2014_{image_id:012d}.jpg"

    def _ref(
        self,
        sample: WorldSample,
        obj_index: int,
        sentences: list[str],
        split_by: str,
        ref_id: int,
        first_id: int,
    ) -> dict:
        """One ref with the real refer API's keys; sentence ids run on from ``first_id``."""
        ann_id = sample.ann_id(obj_index)
        sent_ids = list(range(first_id, first_id + len(sentences)))
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": sample.image_id,
            "split": _refer_split(sample, split_by),
            "sentences": [
                {"sent": s, "raw": s[0].upper() + s[1:] + ".", "tokens": s.split(), "sent_id": sid}
                for s, sid in zip(sentences, sent_ids, strict=True)
            ],
            "sent_ids": sent_ids,
            "category_id": self.coco.category_id(sample.scene.objects[obj_index].category),
            "file_name": f"{self.file_name(sample.image_id)[:-4]}_{ann_id}.jpg",
        }

    def add(self, sample: WorldSample) -> None:
        name = self.file_name(sample.image_id)
        place_image(self.images.path(sample), self.root / "images/mscoco/images/train2014" / name)
        self.coco.add_image(sample, name)
        for dataset, split_by in REFER_DATASETS.items():
            refs = self.refs[dataset]
            for obj_index, sentences in sample.refs[dataset]:
                first_id = self.counts[f"{dataset}_sentences"]
                ref = self._ref(sample, obj_index, sentences, split_by, len(refs), first_id)
                refs.append(ref)
                self.counts[f"{dataset}_sentences"] += len(sentences)
                self.counts[f"{dataset}_{ref['split']}_refs"] += 1
            self.counts[f"{dataset}_refs"] = len(refs)
            # Objects with no true and unique expression in this dataset's grammar get no ref.
            self.counts[f"{dataset}_objects_without_ref"] += len(sample.scene.objects) - len(
                sample.refs[dataset]
            )

    def close(self) -> dict[str, int]:
        for dataset, split_by in REFER_DATASETS.items():
            write_json_atomic(self.root / dataset / "instances.json", self.coco.instances())
            # Protocol 2 and plain containers only, like the original files: any restricted unpickler reads it.
            data = pickle.dumps(self.refs[dataset], protocol=2)
            write_bytes_atomic(self.root / dataset / f"refs({split_by}).p", data)
        return dict(self.counts)


class _CocoTables:
    """COCO detection tables (images, annotations with xywh pixel boxes and polygons, categories)."""

    def __init__(self, cats: list[Category]):
        self.cats = cats
        self.ids = {c.name: c.id for c in cats}
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def category_id(self, name: str) -> int:
        return self.ids[name]

    def add_image(self, sample: WorldSample, file_name: str) -> None:
        scene = sample.scene
        self.images.append(
            {"id": sample.image_id, "file_name": file_name, "width": scene.width, "height": scene.height}
        )
        for i, obj in enumerate(scene.objects):
            self.annotations.append({
                "id": sample.ann_id(i),
                "image_id": sample.image_id,
                "category_id": self.ids[obj.category],
                "bbox": sample.box_xywh(i),
                "area": obj.area,
                "iscrowd": 0,
                "segmentation": [obj.polygon],
            })  # fmt: skip

    def instances(self) -> dict:
        categories = [{"id": c.id, "name": c.name, "supercategory": c.shape} for c in self.cats]
        info = {"description": "cloc-mllm synthetic world"}
        return {
            "info": info,
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }


class CocoWriter:
    """``coco/annotations/{instances,captions}_{split}.json`` with images in ``coco/{split}/``."""

    def __init__(self, out: Path, images: ImageFolderWriter, cats: list[Category]):
        self.root = out / "coco"
        self.images = images
        self.cats = cats
        self.tables: dict[str, _CocoTables] = {}
        self.captions: dict[str, list[dict]] = {}

    def add(self, sample: WorldSample) -> None:
        name = f"{sample.key}.jpg"
        place_image(self.images.path(sample), self.root / sample.split / name)
        self.tables.setdefault(sample.split, _CocoTables(self.cats)).add_image(sample, name)
        captions = self.captions.setdefault(sample.split, [])
        captions.append({"id": sample.image_id, "image_id": sample.image_id, "caption": sample.caption})

    def close(self) -> dict[str, int]:
        counts = {}
        for split, table in self.tables.items():
            instances = table.instances()
            write_json_atomic(self.root / "annotations" / f"instances_{split}.json", instances)
            # Like COCO's captions files: no categories (pycocotools would index them as detections).
            captions = {k: v for k, v in instances.items() if k != "categories"}
            captions["annotations"] = self.captions[split]
            write_json_atomic(self.root / "annotations" / f"captions_{split}.json", captions)
            counts[f"{split}_images"] = len(table.images)
            counts[f"{split}_annotations"] = len(table.annotations)
        return counts


class FlickrWriter:
    """Flickr30k Entities layout: ``Annotations/ID.xml`` (1-based inclusive pixel boxes),
    ``Sentences/ID.txt`` (``[/EN#id/type words]`` markup), ``{train,val,test}.txt`` and
    ``flickr30k-images/ID.jpg``.

    Entity ids are ``image_id * 100 + k``: one per object, one per grouped mention ("two red circles",
    an entity with several boxes) and one for the background scene phrase (no box, ``<scene>1``).
    """

    def __init__(self, out: Path, images: ImageFolderWriter):
        self.root = out / "flickr30k_entities"
        self.images = images
        self.split_ids: dict[str, list[int]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, sample: WorldSample) -> None:
        place_image(self.images.path(sample), self.root / "flickr30k-images" / f"{sample.image_id}.jpg")
        n = len(sample.scene.objects)
        entity: dict[tuple[int, ...], int] = {(i,): sample.image_id * 100 + i for i in range(n)}
        lines = []
        for sentence in sample.flickr_sentences:
            words = []
            for k, seg in enumerate(sentence):
                text = seg if isinstance(seg, str) else seg.text
                text = text[:1].upper() + text[1:] if k == 0 else text
                if isinstance(seg, Mention):
                    eid = entity.setdefault(seg.objects, sample.image_id * 100 + len(entity))
                    words.append(f"[/EN#{eid}/{seg.kind} {text}]")
                    self.counts["phrases"] += 1
                else:
                    words.append(text)
            lines.append(" ".join(words) + " .")
        write_bytes_atomic(
            self.root / "Sentences" / f"{sample.image_id}.txt", ("\n".join(lines) + "\n").encode()
        )
        write_bytes_atomic(self.root / "Annotations" / f"{sample.image_id}.xml", self._xml(sample, entity))
        self.split_ids.setdefault(sample.split, []).append(sample.image_id)
        self.counts["sentences"] += len(lines)

    def _xml(self, sample: WorldSample, entity: dict[tuple[int, ...], int]) -> bytes:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{sample.image_id}.jpg"
        size = ET.SubElement(root, "size")
        for tag, value in (("width", sample.scene.width), ("height", sample.scene.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        for i, obj in enumerate(sample.scene.objects):
            node = ET.SubElement(root, "object")
            for members, eid in entity.items():
                if i in members:
                    ET.SubElement(node, "name").text = str(eid)
            box = ET.SubElement(node, "bndbox")
            # Pixel columns x1 .. x2-1 (0-based) -> first and last pixel counted from 1, the dataset's
            # convention; its reader (and ours) gives back (x1, y1, x2 - 1, y2 - 1).
            x1, y1, x2, y2 = obj.box
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(box, tag).text = str(value)
        scene_ids = {eid for members, eid in entity.items() if not members}
        for eid in sorted(scene_ids):
            node = ET.SubElement(root, "object")
            ET.SubElement(node, "name").text = str(eid)
            ET.SubElement(node, "nobndbox").text = "0"
            ET.SubElement(node, "scene").text = "1"
        ET.indent(root)
        buffer = io.BytesIO()
        ET.ElementTree(root).write(buffer, encoding="utf-8")
        return buffer.getvalue()

    def close(self) -> dict[str, int]:
        for split, ids in self.split_ids.items():
            write_bytes_atomic(self.root / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())
            self.counts[f"{split}_images"] = len(ids)
        return dict(self.counts)


class LlavaWriter:
    """``llava/{split}.json``: one multi-turn record per image; images relative to ``out/images``."""

    def __init__(self, out: Path):
        self.root = out / "llava"
        self.records: dict[str, list[dict]] = {}

    def add(self, sample: WorldSample) -> None:
        turns = []
        for k, (question, answer) in enumerate(sample.conversation):
            turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + question})
            turns.append({"from": "gpt", "value": answer})
        record = {"id": sample.key, "image": f"{sample.split}/{sample.key}.jpg", "conversations": turns}
        self.records.setdefault(sample.split, []).append(record)

    def close(self) -> dict[str, int]:
        for split, records in self.records.items():
            write_json_atomic(self.root / f"{split}.json", records)
        return {f"{split}_records": len(r) for split, r in self.records.items()}
