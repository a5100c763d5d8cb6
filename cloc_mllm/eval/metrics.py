"""Evaluation metrics on plain boxes, scores and strings; no model code.

Boxes are xyxy relative to the original image, pixels or normalised alike: IoU does not change when x
and y are scaled by different factors, so both frames give the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from cloc_mllm.box_ops import box_iou

Box = Sequence[float]
PROTOCOLS = ("any", "first", "merged")


def merge_boxes(boxes: Sequence[Box]) -> tuple[float, float, float, float]:
    """The smallest box holding all ``boxes`` (Flickr30k's merged-box protocol)."""
    if not boxes:
        raise ValueError("merge_boxes needs at least one box")
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def protocol_ious(predicted: Sequence[Box], targets: Sequence[Box], protocol: str = "any") -> list[float]:
    """IoU of each predicted box (in answer order) against the ground truth under ``protocol``.

    ``any``: best IoU over the target boxes; ``first``: the first target box only; ``merged``: the
    box enclosing all targets. A single-target benchmark (RefCOCO) gives the same under all three.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    if not predicted or not targets:
        return []
    gts = {"any": list(targets), "first": [targets[0]], "merged": [merge_boxes(targets)]}[protocol]
    ious = box_iou(torch.tensor(predicted, dtype=torch.float64), torch.tensor(gts, dtype=torch.float64))
    return ious.max(dim=1).values.tolist()


def score_grounding(
    predictions: Sequence[Sequence[Box]],
    targets: Sequence[Sequence[Box]],
    protocol: str = "any",
    ks: Sequence[int] = (1, 5, 10),
    threshold: float = 0.5,
) -> dict[str, float]:
    """Acc@threshold of the first predicted box, Recall@k over the first k, and mean IoU.

    ``predictions[i]`` is the ranked box list for item i; an empty list (unparseable answer) is a miss.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    n = len(targets)
    hits = {k: 0 for k in ks}
    first_ious = []
    for predicted, target in zip(predictions, targets, strict=True):
        ious = protocol_ious(predicted, target, protocol)
        first_ious.append(ious[0] if ious else 0.0)
        for k in ks:
            hits[k] += any(iou >= threshold for iou in ious[:k])
    first_hits = [int(iou >= threshold) for iou in first_ious]
    result = {f"acc@{threshold:g}": sum(first_hits) / max(n, 1)}
    result.update({f"recall@{k}": hits[k] / max(n, 1) for k in ks})
    result["mean_iou"] = sum(first_ious) / max(n, 1)
    result["n"] = n
    # Per item, in the benchmark's order: what a paired comparison of two systems resamples.
    result[f"hits@{threshold:g}"] = first_hits
    return result


def centre_errors(
    predictions: Sequence[Sequence[Box]], targets: Sequence[Sequence[Box]], sizes: Sequence[tuple[int, int]]
) -> dict[str, float | None]:
    """Does a grounder look at the image at all? Centre error of its first box against a blind guess.

    ``centre_error``: mean |dx| + |dy| / 2 between the first predicted box's centre and the target's
    (the box enclosing all target boxes), in units of image width/height, over the answered items.
    ``centre_error_blind``: the same for one constant guess, the mean target centre of these items: the
    best an answer that ignores the image can do. A grounder near the blind figure answers from the
    question's words and the data's box prior, whatever its Acc@0.5. ``sizes`` are (width, height).
    """
    if not len(predictions) == len(targets) == len(sizes):
        raise ValueError(f"{len(predictions)} predictions, {len(targets)} targets, {len(sizes)} sizes")
    answered = [i for i, predicted in enumerate(predictions) if predicted and targets[i]]
    if not answered:
        return {"centre_error": None, "centre_error_blind": None, "answered": 0}

    def centres(boxes: list[Box]) -> Tensor:  # (N, 2) normalised centres
        xyxy = torch.tensor(boxes, dtype=torch.float64)
        scale = torch.tensor([sizes[i] for i in answered], dtype=torch.float64)
        return (xyxy[:, :2] + xyxy[:, 2:]) / 2 / scale

    predicted = centres([predictions[i][0] for i in answered])
    target = centres([merge_boxes(targets[i]) for i in answered])
    return {
        "centre_error": (predicted - target).abs().mean().item(),
        "centre_error_blind": (target - target.mean(dim=0)).abs().mean().item(),
        "answered": len(answered),
    }


def mean_box_accuracy(
    targets: Sequence[Sequence[Box]], sizes: Sequence[tuple[int, int]], threshold: float = 0.5
) -> float | None:
    """Reference row: Acc@``threshold`` (any target box) of one constant answer that ignores image and
    question, the mean normalised target box of these items, put into each image's pixels.

    What a grounder scores from the data's box prior alone; ``sizes`` are (width, height).
    """
    if len(targets) != len(sizes):
        raise ValueError(f"{len(targets)} targets, {len(sizes)} sizes")
    kept = [i for i, t in enumerate(targets) if t]
    if not kept:
        return None
    scale = torch.tensor([[*sizes[i], *sizes[i]] for i in kept], dtype=torch.float64)  # (N, 4)
    merged = torch.tensor([merge_boxes(targets[i]) for i in kept], dtype=torch.float64) / scale
    guess = merged.mean(dim=0)
    hits = 0
    for row, i in enumerate(kept):
        ious = box_iou((guess * scale[row]).unsqueeze(0), torch.tensor(targets[i], dtype=torch.float64))
        hits += bool((ious >= threshold).any())
    return hits / len(kept)


def random_object_accuracy(
    targets: Sequence[Sequence[Box]], candidates: Sequence[Sequence[Box]], threshold: float = 0.5
) -> float | None:
    """Reference row: the expected Acc@``threshold`` of answering one of ``candidates[i]`` at random.

    With every annotated object of the image as the candidates, this is a grounder that finds objects
    but ignores the words; with the objects of the target's class, one that reads the class (colour and
    shape) but not the relation ("left of", "large"). Exact expectation, no sampling; items without
    candidates are left out (None when none has any).
    """
    if len(targets) != len(candidates):
        raise ValueError(f"{len(targets)} targets, {len(candidates)} candidate lists")
    kept = [i for i, c in enumerate(candidates) if c and targets[i]]
    if not kept:
        return None
    expected = 0.0
    for i in kept:
        ious = box_iou(torch.tensor(candidates[i], dtype=torch.float64), torch.tensor(targets[i], dtype=torch.float64))
        expected += (ious >= threshold).any(dim=1).double().mean().item()  # share of candidates that hit
    return expected / len(kept)


def object_hits(
    predictions: Sequence[Sequence[Box]],
    targets: Sequence[Sequence[Box]],
    objects: Sequence[Sequence[Box]],
    threshold: float = 0.5,
) -> dict[str, float | int | None]:
    """Does a grounder find *an* object, and is it the referred one? Two rates that Acc@0.5 folds together.

    ``hit``: share of items whose first predicted box overlaps some annotated object of the image
    (``objects[i]``, the target among them) at IoU >= ``threshold``; an empty answer is a miss.
    ``referred_of_hits``: of those, the share that overlap the target. A grounder that finds objects but
    ignores the words lands on the referred one as often as a random object of the image
    (:func:`random_object_accuracy`); one that reads the expression comes near 1. Items without annotated
    objects are left out (None when none has any).
    """
    if not len(predictions) == len(targets) == len(objects):
        raise ValueError(f"{len(predictions)} predictions, {len(targets)} targets, {len(objects)} object lists")
    kept = [i for i, candidates in enumerate(objects) if candidates and targets[i]]
    found = referred = 0
    for i in kept:
        if not predictions[i]:
            continue
        first = [predictions[i][0]]
        if protocol_ious(first, objects[i])[0] >= threshold:
            found += 1
            referred += protocol_ious(first, targets[i])[0] >= threshold
    return {
        "hit": found / len(kept) if kept else None,
        "referred_of_hits": referred / found if found else None,
        "items": len(kept),
    }


def paired_bootstrap_gap(
    hits_a: dict[str, Sequence[int]],
    hits_b: dict[str, Sequence[int]],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The gap ``mean_split(acc_b) - mean_split(acc_a)`` with a percentile bootstrap interval.

    ``hits_*`` map split -> per-item 0/1 of the same items in the same order (both systems answered the
    same questions). Items are resampled within each split (stratified) and the same draw is used for
    both systems (paired), so the interval reflects which items were asked, not only the systems.
    """
    if set(hits_a) != set(hits_b) or not hits_a:
        raise ValueError(f"both systems need the same splits, got {sorted(hits_a)} and {sorted(hits_b)}")
    generator = torch.Generator().manual_seed(seed)
    gap = torch.zeros(resamples, dtype=torch.float64)
    observed = 0.0
    for split in sorted(hits_a):
        a = torch.tensor(hits_a[split], dtype=torch.float64)
        b = torch.tensor(hits_b[split], dtype=torch.float64)
        if a.shape != b.shape or a.numel() == 0:
            raise ValueError(f"{split}: {a.numel()} and {b.numel()} items; a paired gap needs the same items")
        draw = torch.randint(0, a.numel(), (resamples, a.numel()), generator=generator)  # (R, N)
        gap += (b[draw] - a[draw]).mean(dim=1)
        observed += (b - a).mean().item()
    gap /= len(hits_a)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(gap, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"gap": observed / len(hits_a), "low": low, "high": high, "confidence": confidence, "resamples": resamples}


def retrieval_recall(
    similarity: Tensor, positives: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k: share of queries with a positive among their k most similar candidates.

    similarity: (Q, C) scores; positives: (Q, C) bool. Queries without any positive are an error,
    since they would silently lower every recall.
    """
    if similarity.shape != positives.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} vs positives {tuple(positives.shape)}")
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive candidate")
    order = similarity.argsort(dim=1, descending=True)
    ranked_pos = positives.gather(1, order)  # (Q, C) positives in rank order
    first_hit = ranked_pos.float().argmax(dim=1)  # rank of the best-ranked positive
    return {f"R@{k}": (first_hit < k).float().mean().item() for k in ks}


def mean_per_class_accuracy(predicted: Tensor, target: Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Mean over classes present in ``target`` of their accuracy, and the per-class list (NaN if absent)."""
    per_class = []
    for c in range(num_classes):
        mask = target == c
        per_class.append((predicted[mask] == c).float().mean().item() if mask.any() else float("nan"))
    present = [a for a in per_class if a == a]
    return (sum(present) / len(present) if present else 0.0), per_class


def topk_accuracy(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """(N, C) logits, (N,) labels -> {"top1": ..., "top5": ...}; k is capped at the class count."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return {f"top{k}": hit[:, :k].any(dim=1).float().mean().item() for k in ks}


# ---- text matching for referring (box -> phrase) --------------------------------------------------

_ARTICLES = {"a", "an", "the"}


def text_tokens(text: str) -> list[str]:
    """Lower-case word tokens without punctuation and articles."""
    return [t for t in re.findall(r"[a-z0-9]+", (text or "").lower()) if t not in _ARTICLES]


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def exact_match(predicted: str, references: Sequence[str]) -> bool:
    """The answer equals a reference after lower-casing and dropping punctuation and articles."""
    answer = text_tokens(predicted)
    return bool(answer) and any(answer == text_tokens(r) for r in references)


def noun_match(predicted: str, noun: str) -> bool:
    """The reference noun (e.g. the object's category, possibly several words) occurs in the answer."""
    answer = [_singular(t) for t in text_tokens(predicted)]
    words = [_singular(t) for t in text_tokens(noun)]
    if not words:
        return False
    return any(answer[i : i + len(words)] == words for i in range(len(answer) - len(words) + 1))


def token_f1(predicted: str, references: Sequence[str]) -> float:
    """Best word-overlap F1 (SQuAD style) of the answer against any reference."""
    answer = text_tokens(predicted)
    best = 0.0
    for ref in references:
        words = text_tokens(ref)
        common = sum(min(answer.count(w), words.count(w)) for w in set(answer))
        if common:
            p, r = common / len(answer), common / len(words)
            best = max(best, 2 * p * r / (p + r))
    return best


def cider(predictions: dict[str, str], references: dict[str, list[str]]) -> float | None:
    """Corpus CIDEr-D from ``pycocoevalcap`` when installed (else None).

    Texts are tokenised by :func:`text_tokens` instead of the Java PTB tokenizer, so the score is close
    to, not identical with, the COCO server's.
    """
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return None
    keys = sorted(predictions)
    if not keys:
        return None
    res = {k: [" ".join(text_tokens(predictions[k])) or "empty"] for k in keys}
    gts = {k: [" ".join(text_tokens(r)) for r in references[k]] for k in keys}
    score, _ = Cider().compute_score(gts, res)
    return float(score)
