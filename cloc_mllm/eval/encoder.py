"""Encoder-level evaluation (no LLM) of a CLOC model or a plain CLIP loaded as one.

Plain functions ``(model, tokenizer, data, ...) -> dict of metrics`` so pretraining can call them for
periodic evaluation. Regions are embedded by the model's trained head (``head=None``) or, for CLIP, by
a parameter-free read-out: ``head="clip_roialign"`` (RoIAlign over the last layer's tokens, CLIP's own
projection; the paper's baseline) or ``"clip_maskclip"`` (the same over MaskCLIP's value tokens). Boxes go to the
model frame through the image transform, and predicted boxes come back through its inverse, so every
score is on the original image. Unreadable images are counted in ``counts``, never raised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cloc_mllm.data.coco import CaptionedImage, CocoDetection
from cloc_mllm.data.imagefolder import ImageFolder
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem, region_targets, score_benchmark
from cloc_mllm.eval.cache import cached_predict_benchmarks
from cloc_mllm.eval.inputs import (
    ImageRef,
    encoder_transform,
    load_images,
    model_device,
    normalised_boxes,
    tokenize,
)
from cloc_mllm.eval.metrics import mean_per_class_accuracy, retrieval_recall, topk_accuracy
from cloc_mllm.eval.sharding import Shard

# A small prompt ensemble (in the spirit of CLIP's): class embeddings are the mean over templates.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of the {}.",
    "an image showing a {}.",
    "a close-up of a {}.",
    "a drawing of a {}.",
    "there is a {} here.",
)
# The bare class name: for encoders trained on short region phrases (the synthetic world) whose
# tokenizer never saw "photo" or "close-up", an ensemble of web-caption templates only adds noise.
PLAIN_TEMPLATES = ("{}",)
TEMPLATE_SETS = {"clip": DEFAULT_TEMPLATES, "plain": PLAIN_TEMPLATES}
RETRIEVAL_KS = (1, 5, 10)


def in_eval_mode(fn: Callable) -> Callable:
    """Run under eval() and no_grad, then give the model back in the mode it came in (training loops)."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


# ---- features ----------------------------------------------------------------------------------


def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """(N, D) normalised text embeddings."""
    device = model_device(model)
    parts = [
        model.get_text_features(**tokenize(tokenizer, texts[i : i + batch_size], model, device)).float()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.projection_dim)


def class_embeddings(model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """(C, D): per class, the renormalised mean of its prompt-ensemble text embeddings."""
    texts = [t.format(name) for name in classnames for t in templates]
    embeds = encode_texts(model, tokenizer, texts).view(len(classnames), len(templates), -1)
    return F.normalize(embeds.mean(dim=1), dim=-1)


def image_batches(
    records: Sequence, transform: ImageTransform, batch_size: int, boxes: Callable | None = None
):
    """Per batch: indices of the readable records, pixel_values (b, 3, S, S), the transform outputs
    (model-frame boxes of ``boxes(record)`` pixel xyxy, box frame) and the (width, height) of each."""
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images, sizes = load_images(chunk)
        ok = [i for i, image in enumerate(images) if image is not None]
        if not ok:
            continue
        outs = [
            transform(images[i], normalised_boxes(boxes(chunk[i]), sizes[i]) if boxes else None) for i in ok
        ]
        yield (
            [start + i for i in ok],
            torch.stack([o.pixel_values for o in outs]),
            outs,
            [sizes[i] for i in ok],
        )


def image_features(
    model, records: Sequence, transform: ImageTransform, batch_size: int
) -> tuple[Tensor, list[int]]:
    """(n, D) embeddings of the readable records and their indices."""
    device, feats, kept = model_device(model), [], []
    for idx, pixels, _, _ in image_batches(records, transform, batch_size):
        feats.append(model.get_image_features(pixels.to(device, model.dtype)).float().cpu())
        kept += idx
    return (torch.cat(feats) if feats else torch.zeros(0, model.config.projection_dim)), kept


def region_features(
    model, groups: Sequence, boxes: Callable, transform: ImageTransform, batch_size: int, head: str | None
) -> list[Tensor | None]:
    """Per group (one image and its pixel boxes ``boxes(group)``): (K, D) region embeddings, or None
    when the image is unreadable. One vision encode per image serves all its boxes."""
    device = model_device(model)
    out: list[Tensor | None] = [None] * len(groups)
    for idx, pixels, outs, _ in image_batches(groups, transform, batch_size, boxes):
        k = max(len(o.boxes) for o in outs)
        padded = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(len(outs), k, 1)
        for row, o in enumerate(outs):
            padded[row, : len(o.boxes)] = o.boxes
        tokens = model.get_region_tokens(pixels.to(device, model.dtype), head)  # (images, N, C)
        feats = model.get_region_features(
            vision_tokens=tokens, boxes=padded.to(device, tokens.dtype), head=head
        )
        for row, (i, o) in enumerate(zip(idx, outs, strict=True)):
            out[i] = feats[row, : len(o.boxes)].float().cpu()
    return out


def image_groups(records: Sequence) -> tuple[list[ImageRef], list[list[int]]]:
    """The distinct images of ``records`` (path and annotated size) and, per image, the indices of its
    records, in first-seen order: what lets every record of an image share one vision encode."""
    members: dict[tuple[str, int, int], list[int]] = {}
    for i, record in enumerate(records):
        members.setdefault((record.image_path, record.width, record.height), []).append(i)
    return [ImageRef(*key) for key in members], list(members.values())


def region_features_per_record(
    model, records: Sequence, transform: ImageTransform, batch_size: int, head: str | None
) -> list[Tensor | None]:
    """(D,) region embedding of each record's ``box`` (pixel xyxy on its ``image_path``), or None when
    its image is unreadable; records on the same image share one vision encode."""
    groups, members_of = image_groups(records)
    box_lists = {g: [records[i].box for i in m] for g, m in zip(groups, members_of, strict=True)}  # distinct
    feats = region_features(model, groups, box_lists.__getitem__, transform, batch_size, head)
    out: list[Tensor | None] = [None] * len(records)
    for members, group_feats in zip(members_of, feats, strict=True):
        for j, i in enumerate(members):
            out[i] = None if group_feats is None else group_feats[j]
    return out


# ---- region level ------------------------------------------------------------------------------


@in_eval_mode
def region_recognition(
    model,
    tokenizer,
    detection: CocoDetection,
    transform: ImageTransform | None = None,
    batch_size: int = 16,
    head: str | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict:
    """Zero-shot classification of every ground-truth box: mean per-class accuracy (mAcc) and accuracy."""
    transform = transform or encoder_transform(model)
    feats = region_features_per_record(model, detection.regions, transform, batch_size, head)
    labels = [r.category_index for r, f in zip(detection.regions, feats, strict=True) if f is not None]
    missing_images = len({r.image_path for r, f in zip(detection.regions, feats, strict=True) if f is None})
    if not labels:
        return {"mAcc": 0.0, "acc": 0.0, "n": 0, "counts": {"missing_image": missing_images}}
    classes = class_embeddings(model, tokenizer, detection.categories, templates).cpu()
    logits = torch.stack([f for f in feats if f is not None]) @ classes.t()
    target = torch.tensor(labels)
    macc, per_class = mean_per_class_accuracy(logits.argmax(1), target, len(detection.categories))
    return {
        "mAcc": macc,
        "acc": (logits.argmax(1) == target).float().mean().item(),
        "per_class": {c: a for c, a in zip(detection.categories, per_class, strict=True) if a == a},  # no NaN
        "n": len(labels),
        "counts": {
            "missing_image": missing_images,
            "regions_lost_to_missing_images": len(detection.regions) - len(labels),
        },
    }


@in_eval_mode
def region_text_retrieval(
    model,
    tokenizer,
    benchmark: GroundingBenchmark,
    transform: ImageTransform | None = None,
    batch_size: int = 16,
    head: str | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict:
    """Over all single-box targets of a benchmark: text -> region and region -> text Recall@k, and
    ``t2r_in_image_R@1``: how often a text ranks its own box first among the boxes of its image."""
    transform = transform or encoder_transform(model)
    targets, skipped = region_targets(benchmark)
    feats = region_features_per_record(model, targets, transform, batch_size, head)
    kept = [(t, f) for t, f in zip(targets, feats, strict=True) if f is not None]
    missing = len(targets) - len(kept)
    if not kept:
        return {"n_regions": 0, "counts": {"missing_image": missing, **skipped}}
    regions = torch.stack([f for _, f in kept])  # (R, D)
    texts = [(r, text) for r, (t, _) in enumerate(kept) for text in t.references]
    text_feats = encode_texts(model, tokenizer, [text for _, text in texts]).cpu()  # (T, D)
    owner = torch.tensor([r for r, _ in texts])
    positives = owner[:, None] == torch.arange(len(kept))[None, :]  # (T, R)
    sim = text_feats @ regions.t()
    result = {f"t2r_{k}": v for k, v in retrieval_recall(sim, positives, ks).items()}
    result.update({f"r2t_{k}": v for k, v in retrieval_recall(sim.t(), positives.t(), ks).items()})
    # Grounding by ranking: only the annotated boxes of the text's own image compete.
    image_of = [t.image_path for t, _ in kept]
    same_image = torch.tensor([[image_of[r] == path for path in image_of] for r, _ in texts])  # (T, R)
    in_image = retrieval_recall(sim.masked_fill(~same_image, float("-inf")), positives, ks=(1,))
    result["t2r_in_image_R@1"] = in_image["R@1"]
    result.update(
        {"n_regions": len(kept), "n_texts": len(texts), "counts": {"missing_image": missing, **skipped}}
    )
    return result


# ---- image level -------------------------------------------------------------------------------


@in_eval_mode
def image_text_retrieval(
    model,
    tokenizer,
    images: Sequence[CaptionedImage],
    transform: ImageTransform | None = None,
    batch_size: int = 32,
    ks: Sequence[int] = RETRIEVAL_KS,
) -> dict:
    """COCO/Flickr-style retrieval: image -> any of its captions, caption -> its image, Recall@k."""
    transform = transform or encoder_transform(model)
    feats, kept = image_features(model, images, transform, batch_size)
    captions = [(row, c) for row, i in enumerate(kept) for c in images[i].captions]
    if not captions:
        return {"n_images": 0, "counts": {"missing_image": len(images)}}
    text_feats = encode_texts(model, tokenizer, [c for _, c in captions]).cpu()
    owner = torch.tensor([row for row, _ in captions])
    positives = owner[:, None] == torch.arange(len(kept))[None, :]  # (T, I)
    sim = text_feats @ feats.t()
    result = {f"t2i_{k}": v for k, v in retrieval_recall(sim, positives, ks).items()}
    result.update({f"i2t_{k}": v for k, v in retrieval_recall(sim.t(), positives.t(), ks).items()})
    result.update(
        {
            "n_images": len(kept),
            "n_texts": len(captions),
            "counts": {"missing_image": len(images) - len(kept)},
        }
    )
    return result


@in_eval_mode
def zero_shot_classification(
    model,
    tokenizer,
    folder: ImageFolder,
    transform: ImageTransform | None = None,
    batch_size: int = 32,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict:
    """ImageNet-style zero-shot: top-1 / top-5 accuracy and mean per-class accuracy."""
    transform = transform or encoder_transform(model)
    records = [ImageRef(item.image_path) for item in folder.items]
    feats, kept = image_features(model, records, transform, batch_size)
    if not kept:
        return {"top1": 0.0, "n": 0, "counts": {"missing_image": len(records)}}
    logits = feats @ class_embeddings(model, tokenizer, folder.classnames, templates).cpu().t()
    target = torch.tensor([folder.items[i].label for i in kept])
    result = topk_accuracy(logits, target, ks=(1, 5))
    result["mean_per_class"] = mean_per_class_accuracy(logits.argmax(1), target, len(folder.classnames))[0]
    result.update({"n": len(kept), "counts": {"missing_image": len(records) - len(kept)}})
    return result


# ---- grounding head ----------------------------------------------------------------------------


def grounding_head_rows(
    model, tokenizer, items: Sequence[GroundingItem], transform: ImageTransform
) -> list[dict]:
    """The CLOC grounding head's box per item, mapped back to normalised xyxy on the original image.

    Items on the same image (every expression of a RefCOCO image) share one vision encode; only the
    Prompter's text-to-box pass runs per item.
    """
    device = model_device(model)
    rows = [{"status": "missing_image", "boxes": [], "image_size": [it.width, it.height]} for it in items]
    groups, members = image_groups(items)
    for idx, pixels, outs, sizes in image_batches(groups, transform, len(groups)):
        tokens = model.get_vision_tokens(pixels.to(device, model.dtype))  # (images, N, D)
        asked = [(i, row) for row, g in enumerate(idx) for i in members[g]]  # (item, image row)
        text = tokenize(tokenizer, [items[i].text for i, _ in asked], model, device)
        text_embeds = model.get_text_features(**text)  # (items, D)
        image_rows = torch.tensor([row for _, row in asked], device=tokens.device)
        pred = model.ground(vision_tokens=tokens[image_rows], text_embeds=text_embeds).float().cpu()  # (items, 4)
        for (i, row), box in zip(asked, pred, strict=True):
            rows[i] = {"status": "ok", "boxes": [outs[row].frame.to_original(box).tolist()], "image_size": sizes[row]}
    return rows


@in_eval_mode
def evaluate_grounding_head(
    model,
    tokenizer,
    benchmarks: Sequence[GroundingBenchmark],
    transform: ImageTransform | None = None,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    shard: Shard | None = None,
) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """Acc@0.5 (per protocol) of ``model.ground`` on each benchmark, and the prediction rows."""
    transform = transform or encoder_transform(model)
    rows = cached_predict_benchmarks(
        benchmarks,
        "grounding_head",
        lambda batch: grounding_head_rows(model, tokenizer, batch, transform),
        cache_dir,
        shard or Shard(),
        batch_size=batch_size,
        desc="ground-head",
    )
    # one box per answer: no Recall@k
    metrics = {bench.name: score_benchmark(bench, rows[bench.name], ks=()) for bench in benchmarks}
    return metrics, rows
