"""Grounding benchmarks as one item type: RefCOCO/+/g splits and Flickr30k Entities val/test.

Every expression (RefCOCO*) or (sentence, phrase) pair (Flickr30k) becomes a :class:`GroundingItem`
whose ground truth is a list of pixel boxes on the original image; MLLM answers and the CLOC grounding
head are scored on them by the same function, under the protocols of the benchmark.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cloc_mllm.data.flickr30k import FlickrPhrase, load_flickr30k_entities
from cloc_mllm.data.refer import RefRecord, image_objects, load_refer, refs_file
from cloc_mllm.eval.metrics import (
    centre_errors,
    mean_box_accuracy,
    object_hits,
    random_object_accuracy,
    score_grounding,
)

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# name -> (family, dataset, split_by, split); the published evaluation splits.
GROUNDING_SPLITS: dict[str, tuple[str, str, str, str]] = {
    "refcoco_val": ("refer", "refcoco", "unc", "val"),
    "refcoco_testA": ("refer", "refcoco", "unc", "testA"),
    "refcoco_testB": ("refer", "refcoco", "unc", "testB"),
    "refcoco+_val": ("refer", "refcoco+", "unc", "val"),
    "refcoco+_testA": ("refer", "refcoco+", "unc", "testA"),
    "refcoco+_testB": ("refer", "refcoco+", "unc", "testB"),
    "refcocog_val": ("refer", "refcocog", "umd", "val"),
    "refcocog_test": ("refer", "refcocog", "umd", "test"),
    "flickr30k_val": ("flickr", "flickr30k_entities", "", "val"),
    "flickr30k_test": ("flickr", "flickr30k_entities", "", "test"),
}
REFER_PROTOCOLS = ("any",)  # one box per expression: every protocol gives the same number
FLICKR_PROTOCOLS = ("any", "first", "merged")


@dataclass(frozen=True)
class GroundingItem:
    key: str  # unique within its benchmark
    image_path: str
    text: str  # the expression or phrase to ground
    boxes: tuple[Box, ...]  # ground truth, pixel xyxy on the original image
    width: int = 0  # from the annotation (0: unknown, read from the image)
    height: int = 0
    target: str = ""  # items sharing a target refer to the same box(es): referring asks once per target
    noun: str = ""  # the object's class word, for referring's noun match
    sentence: str = ""  # Flickr30k: the sentence the phrase comes from
    # every annotated object of the image, (pixel xyxy, class name); empty when the dataset lists none
    objects: tuple[tuple[Box, str], ...] = ()


@dataclass
class GroundingBenchmark:
    name: str
    items: list[GroundingItem]
    protocols: tuple[str, ...]
    skipped: Counter = field(default_factory=Counter)  # bad annotations the loader left out


@dataclass(frozen=True)
class RegionTarget:
    """One referred box with all the expressions naming it (referring and region-text retrieval)."""

    key: str
    image_path: str
    box: Box  # pixel xyxy, original image
    references: tuple[str, ...]
    noun: str
    width: int = 0
    height: int = 0


def region_targets(benchmark: GroundingBenchmark) -> tuple[list[RegionTarget], Counter]:
    """Single-box targets of a benchmark with every expression of each; multi-box phrases are counted."""
    grouped: dict[str, list[GroundingItem]] = {}
    for item in benchmark.items:
        grouped.setdefault(item.target, []).append(item)
    targets, skipped = [], Counter()
    for key, items in grouped.items():
        first = items[0]
        if len(first.boxes) != 1:
            skipped["multi_box_target"] += 1
            continue
        references = tuple(dict.fromkeys(item.text for item in items))
        targets.append(
            RegionTarget(
                key, first.image_path, first.boxes[0], references, first.noun, first.width, first.height
            )
        )
    return targets, skipped


def refer_items(
    records: list[RefRecord], prefix: str, objects: dict[int, list[tuple[Box, str]]] | None = None
) -> list[GroundingItem]:
    """One item per sentence of every ref; ``objects`` (:func:`image_objects`) fills each item's scene."""
    objects = objects or {}
    return [
        GroundingItem(
            key=f"{prefix}/{r.ref_id}/{i}",
            image_path=r.image_path,
            text=sentence,
            boxes=(tuple(r.box),),
            width=r.width,
            height=r.height,
            target=f"{prefix}/{r.ref_id}",
            noun=r.category,
            objects=tuple(objects.get(r.image_id, ())),
        )
        for r in records
        for i, sentence in enumerate(r.sentences)
    ]


def flickr_items(records: list[FlickrPhrase], prefix: str) -> list[GroundingItem]:
    """One item per (sentence, phrase); the phrase's last word stands in for its noun."""
    return [
        GroundingItem(
            key=f"{prefix}/{r.image_id}/{r.sentence_index}/{r.phrase_id}",
            image_path=r.image_path,
            text=r.phrase,
            boxes=tuple(tuple(b) for b in r.boxes),
            width=r.width,
            height=r.height,
            target=f"{prefix}/{r.image_id}/{r.phrase_id}",
            noun=r.phrase.split()[-1] if r.phrase.split() else "",
            sentence=r.sentence,
        )
        for r in records
    ]


def load_grounding_benchmarks(
    refer_root: str | Path | None,
    flickr_root: str | Path | None,
    names: list[str] | None = None,
    refer_image_dir: str | Path | None = None,
    flickr_image_dir: str | Path | None = None,
    limit: int | None = None,
) -> tuple[list[GroundingBenchmark], dict[str, str]]:
    """The benchmarks in ``names`` (default: all of GROUNDING_SPLITS) whose files exist.

    Returns the loaded benchmarks and, for each one that could not be loaded, why (missing files or an
    unknown split), so a report says what was not evaluated instead of silently leaving it out.
    ``limit`` keeps the first N items of each (quick runs).
    """
    loaded, unavailable = [], {}
    scenes: dict[str, dict] = {}  # dataset -> its images' objects, read once for all its splits
    for name in names or list(GROUNDING_SPLITS):
        if name not in GROUNDING_SPLITS:
            raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(GROUNDING_SPLITS)}")
        family, dataset, split_by, split = GROUNDING_SPLITS[name]
        skipped: Counter = Counter()
        if family == "refer":
            if refer_root is None or not refs_file(refer_root, dataset, split_by).is_file():
                unavailable[name] = f"no refer files for {dataset}({split_by}) under {refer_root}"
                continue
            records = load_refer(refer_root, dataset, split_by, split, refer_image_dir, stats=skipped)
            if dataset not in scenes:
                scenes[dataset] = image_objects(refer_root, dataset)
            items, protocols = refer_items(records, name, scenes[dataset]), REFER_PROTOCOLS
        else:
            if flickr_root is None or not (Path(flickr_root) / f"{split}.txt").is_file():
                unavailable[name] = f"no Flickr30k Entities {split}.txt under {flickr_root}"
                continue
            records = load_flickr30k_entities(flickr_root, split, flickr_image_dir, stats=skipped)
            items, protocols = flickr_items(records, name), FLICKR_PROTOCOLS
        loaded.append(GroundingBenchmark(name, items[:limit] if limit else items, protocols, skipped))
    for name, why in unavailable.items():
        logger.warning("%s not evaluated: %s", name, why)
    return loaded, unavailable


def score_benchmark(
    benchmark: GroundingBenchmark, rows: dict[str, dict], ks: tuple[int, ...] = (1, 5, 10)
) -> dict:
    """Metrics of one benchmark from prediction rows (key -> {"boxes": normalised xyxy list, "status"}).

    Items whose image could not be read are left out of the metric and counted; every other item is
    scored, an empty or unparseable answer as a miss. Returns per-protocol metrics and the counts;
    ``ks`` are the Recall@k cut-offs (empty for a predictor that gives one box).
    """
    statuses = Counter(rows[item.key].get("status", "ok") for item in benchmark.items)
    scored = [item for item in benchmark.items if rows[item.key].get("status") != "missing_image"]
    predictions = [[_to_pixels(b, rows[i.key]) for b in rows[i.key].get("boxes", [])] for i in scored]
    targets = [list(item.boxes) for item in scored]
    result = {p: score_grounding(predictions, targets, protocol=p, ks=ks) for p in benchmark.protocols}
    sizes = [rows[i.key]["image_size"] for i in scored]
    result["localisation"] = centre_errors(predictions, targets, sizes)
    result["reference"] = {"mean_box_acc@0.5": mean_box_accuracy(targets, sizes)}
    if any(item.objects for item in scored):
        scenes = [[box for box, _ in item.objects] for item in scored]
        same_class = [[box for box, name in item.objects if name == item.noun] for item in scored]
        result["reference"]["random_object_acc@0.5"] = random_object_accuracy(targets, scenes)
        result["reference"]["random_same_class_acc@0.5"] = random_object_accuracy(targets, same_class)
        result["objects"] = object_hits(predictions, targets, scenes)
    result["counts"] = {
        "items": len(benchmark.items),
        "scored": len(scored),
        **{f"status_{k}": v for k, v in sorted(statuses.items())},
        **{f"loader_skipped_{k}": v for k, v in sorted(benchmark.skipped.items()) if v},
    }
    return result


def _to_pixels(box: list[float], row: dict) -> Box:
    width, height = row["image_size"]
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
