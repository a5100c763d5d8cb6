"""VESL on one machine: caption -> noun phrases -> detect -> shard, one work unit per output shard.

:func:`label_shard` is the whole per-shard job and is shared with the Ray runner, which only swaps the
model stages for actor proxies. :func:`run_local` adds the bookkeeping: skip finished shards, refuse an
output directory made from another input, run units in one or several processes, sum the manifests.
"""

from __future__ import annotations

import io
import itertools
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from cloc_mllm.data.images import has_rotation, upright_rgb

from .captioner import CAPTION_MODES, CaptionFn, HFCaptioner, compose_caption
from .detector import OwlPredictor, Region, RegionDetector
from .manifest import ShardStats
from .phrases import build_phrase_extractor
from .sources import SourceRecord, WorkUnit, plan_units, read_unit
from .writer import (
    TOTAL_MANIFEST,
    ShardWriter,
    is_finished,
    read_json,
    remove_stale_temp,
    sample_json,
    shard_paths,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

DetectFn = Callable[[list[Image.Image], list[list[str]]], list[list[Region]]]


@dataclass(frozen=True)
class VeslConfig:
    """Everything that decides what a VESL run writes (stored in every shard manifest)."""

    input: str = field(
        metadata={"help": "Tar pattern ('in/{000..099}.tar'), image folder, or COCO/LLaVA json."}
    )
    output: str = field(metadata={"help": "Output directory for NNNNNN.tar shards and manifests."})
    image_root: str | None = field(
        default=None, metadata={"help": "Image dir for json inputs (default: beside it)."}
    )
    shard_size: int = field(
        default=1000, metadata={"help": "Images per output shard for folder/json inputs."}
    )
    caption_mode: str = field(
        default="auto",
        metadata={"help": f"One of {CAPTION_MODES}; auto: replace with --captioner, else keep."},
    )
    captioner: str | None = field(default=None, metadata={"help": "Image-to-text model id or dir."})
    caption_prompt: str | None = field(
        default=None, metadata={"help": "Instruction (chat) or prefix (plain)."}
    )
    max_new_tokens: int = field(default=96, metadata={"help": "Caption length limit in tokens."})
    phrase_extractor: str = field(default="pattern", metadata={"help": "pattern | nltk | spacy:<model>."})
    max_phrases: int = field(default=20, metadata={"help": "Detector queries per image."})
    detector: str = field(
        default="google/owlv2-base-patch16-ensemble", metadata={"help": "OWLv2/OWL-ViT id or dir."}
    )
    threshold: float = field(
        default=0.1, metadata={"help": "Keep boxes whose best phrase scores above this."}
    )
    nms_iou: float = field(default=0.5, metadata={"help": "IoU of per-phrase non-maximum suppression."})
    batch_size: int = field(default=8, metadata={"help": "Images per model call."})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype: float32 | float16 | bfloat16."})

    def __post_init__(self) -> None:
        if self.caption_mode == "auto":
            object.__setattr__(self, "caption_mode", "replace" if self.captioner else "keep")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode={self.caption_mode!r}: expected one of {CAPTION_MODES}")
        if self.caption_mode == "keep" and self.captioner:
            raise ValueError("caption_mode='keep' would ignore --captioner; use replace or both")
        if self.caption_mode != "keep" and not self.captioner:
            raise ValueError(f"caption_mode={self.caption_mode!r} needs --captioner (a model id or dir)")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be >= 1")


@dataclass
class Stages:
    """The three stages as plain callables: local models, injected fakes, or Ray actor proxies."""

    captioner: CaptionFn | None
    phrases: Callable[[str], list[str]]
    detector: DetectFn


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_captioner(config: VeslConfig, device: str | None = None) -> CaptionFn | None:
    if config.caption_mode == "keep":
        return None
    dtype = getattr(torch, config.dtype)
    device = resolve_device(device or config.device)
    return HFCaptioner.from_pretrained(
        config.captioner, config.caption_prompt, config.max_new_tokens, device, dtype
    )


def build_detector(config: VeslConfig, device: str | None = None) -> DetectFn:
    predictor = OwlPredictor.from_pretrained(
        config.detector, resolve_device(device or config.device), getattr(torch, config.dtype)
    )
    return RegionDetector(predictor, config.threshold, config.nms_iou)


def build_stages(config: VeslConfig, device: str | None = None) -> Stages:
    """Load the models a config names, on ``device`` (default: the config's)."""
    return Stages(
        build_captioner(config, device),
        build_phrase_extractor(config.phrase_extractor, config.max_phrases),
        build_detector(config, device),
    )


def decode(record: SourceRecord) -> tuple[Image.Image, bytes] | None:
    """(RGB image, JPEG bytes to store) or None when undecodable. JPEG input is stored byte for byte
    unless its EXIF tag turns it: boxes are found on the upright image, so that is what is stored."""
    try:
        image = Image.open(io.BytesIO(record.data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
    rgb = upright_rgb(image)
    if image.format == "JPEG" and not has_rotation(image):
        return rgb, record.data
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    return rgb, buffer.getvalue()


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def label_batch(
    batch: list[tuple[SourceRecord, Image.Image, bytes]],
    config: VeslConfig,
    stages: Stages,
    writer: ShardWriter,
    stats: ShardStats,
) -> None:
    """Caption, extract phrases, detect and write one batch of decoded images."""
    if not batch:
        return
    images = [image for _, image, _ in batch]
    generated = stages.captioner(images) if stages.captioner is not None else [None] * len(batch)
    captions = [
        compose_caption(rec.caption, gen, config.caption_mode)
        for (rec, _, _), gen in zip(batch, generated, strict=True)
    ]
    keep = [i for i, caption in enumerate(captions) if caption]
    for _ in range(len(batch) - len(keep)):
        stats.add_failure("empty_caption")
    phrases = {i: stages.phrases(captions[i]) for i in keep}
    to_detect = [i for i in keep if phrases[i]]
    detected = stages.detector([images[i] for i in to_detect], [phrases[i] for i in to_detect])
    regions = dict(zip(to_detect, detected, strict=True))
    for i in keep:
        record, image, jpeg = batch[i]
        found = regions.get(i, [])
        meta = sample_json(
            captions[i], image.width, image.height, [r.to_json() for r in found], record.source
        )
        writer.write(record.key, jpeg, meta)
        stats.add_written(len(phrases[i]), [r.score for r in found])


def label_shard(unit: WorkUnit, config: VeslConfig, stages: Stages) -> ShardStats:
    """Label one work unit into ``NAME.tar`` + ``NAME.manifest.json`` (both atomic)."""
    tar_path, manifest_path = shard_paths(config.output, unit.name)
    stats, seen = ShardStats(), set()
    with ShardWriter(tar_path) as writer:
        for records in batched(read_unit(unit), config.batch_size):
            ready = []
            for record in records:
                reason = record.error or ("duplicate_key" if record.key in seen else None)
                decoded = None if reason else decode(record)
                if decoded is None:
                    stats.add_failure(reason or "undecodable")
                    continue
                seen.add(record.key)
                ready.append((record, *decoded))
            label_batch(ready, config, stages, writer, stats)
    write_json_atomic(manifest_path, {"shard": tar_path.name, "input": unit.origin, **stats.to_json()})
    return stats


def pending_units(config: VeslConfig) -> tuple[list[WorkUnit], list[WorkUnit]]:
    """(all units, units still to do). Finished shards must come from the same input, else error;
    the temp files a killed run left for the units to do are removed (one run per output dir)."""
    units = plan_units(config.input, config.shard_size, config.image_root)
    todo = []
    for unit in units:
        if not is_finished(config.output, unit.name):
            for path in remove_stale_temp(config.output, unit.name):
                logger.info("removed %s, left by an interrupted run", path)
            todo.append(unit)
            continue
        made_from = read_json(shard_paths(config.output, unit.name)[1])["input"]
        if made_from != unit.origin:
            raise ValueError(
                f"{config.output}: shard {unit.name} was made from {made_from!r}, not {unit.origin!r}; "
                "use a fresh output directory for a different input"
            )
    return units, todo


def write_total_manifest(config: VeslConfig, units: list[WorkUnit], errors: dict[str, str]) -> dict:
    """Sum the finished shards' manifests into ``manifest.json``; list unfinished ones and their errors."""
    total, finished = ShardStats(), []
    for unit in units:
        if is_finished(config.output, unit.name):
            total.merge(ShardStats.from_json(read_json(shard_paths(config.output, unit.name)[1])))
            finished.append(unit.name)
    summary = {
        "input": config.input,
        "shards": len(units),
        "finished": len(finished),
        "unfinished": [u.name for u in units if u.name not in set(finished)],
        "errors": errors,
        "config": asdict(config),
        **total.to_json(),
    }
    write_json_atomic(Path(config.output) / TOTAL_MANIFEST, summary)
    return summary


_WORKER_STAGES: dict[str, Stages] = {}  # per worker process: its models, loaded once


def _init_worker(config: VeslConfig, devices: mp.Queue, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_STAGES["stages"] = build_stages(config, devices.get())


def _label_in_worker(unit: WorkUnit, config: VeslConfig) -> str:
    label_shard(unit, config, _WORKER_STAGES["stages"])
    return unit.name


def worker_devices(device: str, num_workers: int) -> list[str]:
    """One device per worker: GPUs round-robin under ``auto``/``cuda``, else the named device."""
    device = resolve_device(device)
    if device == "cuda" and torch.cuda.device_count() > 0:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(num_workers)]
    return [device] * num_workers


def run_local(config: VeslConfig, num_workers: int = 1, stages: Stages | None = None) -> dict:
    """Label every unfinished shard; returns the total manifest. Raises if any shard failed."""
    Path(config.output).mkdir(parents=True, exist_ok=True)
    units, todo = pending_units(config)
    logger.info("VESL: %d shards, %d to do", len(units), len(todo))
    errors: dict[str, str] = {}
    if num_workers <= 1 or len(todo) <= 1:
        stages = stages or (build_stages(config) if todo else None)
        for unit in tqdm(todo, desc="VESL shards", unit="shard"):
            try:
                label_shard(unit, config, stages)
            except Exception as err:  # one broken input shard must not stop the others
                logger.error("shard %s (%s) failed: %s", unit.name, unit.origin, err)
                errors[unit.name] = f"{type(err).__name__}: {err}"
    else:
        if stages is not None:
            raise ValueError("injected stages run in this process only: use num_workers=1")
        ctx = mp.get_context("spawn")
        devices = ctx.Queue()
        for d in worker_devices(config.device, num_workers):
            devices.put(d)
        threads = max(1, (os.cpu_count() or 1) // num_workers)
        with ProcessPoolExecutor(num_workers, ctx, _init_worker, (config, devices, threads)) as pool:
            futures = {pool.submit(_label_in_worker, unit, config): unit for unit in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="VESL shards", unit="shard"):
                unit, err = futures[future], future.exception()
                if err is not None:
                    logger.error("shard %s (%s) failed: %s", unit.name, unit.origin, err)
                    errors[unit.name] = f"{type(err).__name__}: {err}"
    summary = write_total_manifest(config, units, errors)
    if errors:
        raise RuntimeError(
            f"{len(errors)} VESL shard(s) failed (see {config.output}/{TOTAL_MANIFEST}): {errors}"
        )
    return summary
