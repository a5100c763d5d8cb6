"""How good are the pseudo labels? Precision / recall of VESL boxes against ground truth at IoU 0.5.

Ground truth comes from the input itself (the synthetic world's ``regions``, a COCO instances json); the
output shards are joined to it by shard and key. A pseudo box is a true positive when it overlaps an
unmatched ground-truth box of the same phrase by IoU >= 0.5 (greedy, highest score first, as in COCO
evaluation). Phrases are compared after lower-casing, dropping stop-words and singularising plurals
(``"two green crosses"`` == ``"green cross"``); ``match="head"`` compares only the head noun, for ground
truth that names classes ("dog") while captions describe them ("a brown dog").
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import torch

from cloc_mllm.box_ops import box_iou

from .phrases import STOP_WORDS, VERB_AS_NOUN, pattern_tagger
from .sources import plan_units, read_unit
from .writer import iter_output

MATCH_MODES = ("phrase", "head")


@functools.cache
def _tagger():
    return pattern_tagger()


@functools.lru_cache(maxsize=1 << 16)  # every region's phrase is keyed several times per report
def phrase_key(phrase: str) -> str:
    """Normalised phrase: lower case, no stop-words or numbers, plural nouns made singular."""
    from textblob.en.inflect import singularize

    tagged = [(w.lower(), t) for w, t in _tagger()(phrase) if w.lower() not in STOP_WORDS and t != "CD"]
    if tagged and tagged[-1][1] in VERB_AS_NOUN:  # a phrase ends in its head noun, whatever the lexicon says
        tagged[-1] = (tagged[-1][0], VERB_AS_NOUN[tagged[-1][1]])
    return " ".join(singularize(w) if t == "NNS" else w for w, t in tagged)


def head_key(phrase: str) -> str:
    """The head noun (last word) of the normalised phrase."""
    return phrase_key(phrase).rsplit(" ", 1)[-1]


def match_image(
    predictions: list[dict], ground_truth: list[dict], key: Callable[[str], str], iou: float = 0.5
) -> tuple[list[bool], list[bool]]:
    """Greedy matching of one image: (true-positive flag per prediction, matched flag per gt box)."""
    pred_hit, gt_hit = [False] * len(predictions), [False] * len(ground_truth)
    if not predictions or not ground_truth:
        return pred_hit, gt_hit
    ious = box_iou(
        torch.tensor([p["box"] for p in predictions], dtype=torch.float64),
        torch.tensor([g["box"] for g in ground_truth], dtype=torch.float64),
    )  # (P, G)
    gt_keys = [key(g["phrase"]) for g in ground_truth]
    for p in sorted(range(len(predictions)), key=lambda i: -predictions[i].get("score", 1.0)):
        pk = key(predictions[p]["phrase"])
        candidates = [g for g in range(len(ground_truth)) if not gt_hit[g] and gt_keys[g] == pk]
        best = max(candidates, key=lambda g: ious[p, g].item(), default=None)
        if best is not None and ious[p, best] >= iou:
            pred_hit[p], gt_hit[best] = True, True
    return pred_hit, gt_hit


def _ratio(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def quality_report(
    pairs: Iterable[tuple[list[dict], list[dict]]], match: str = "phrase", iou: float = 0.5
) -> dict:
    """Precision / recall over (predicted regions, ground-truth regions) per image, overall and per phrase.

    Also reports phrase-blind box precision / recall, which separates "wrong box" from "wrong name".
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match={match!r}: expected one of {MATCH_MODES}")
    key = phrase_key if match == "phrase" else head_key
    counts = {name: Counter() for name in ("pred", "pred_hit", "gt", "gt_hit")}
    box_only = Counter()
    images = 0
    for predictions, ground_truth in pairs:
        images += 1
        pred_hit, gt_hit = match_image(predictions, ground_truth, key, iou)
        for region, hit in zip(predictions, pred_hit, strict=True):
            counts["pred"][key(region["phrase"])] += 1
            counts["pred_hit"][key(region["phrase"])] += hit
        for region, hit in zip(ground_truth, gt_hit, strict=True):
            counts["gt"][key(region["phrase"])] += 1
            counts["gt_hit"][key(region["phrase"])] += hit
        any_pred, any_gt = match_image(predictions, ground_truth, lambda _: "", iou)
        box_only.update(pred=len(any_pred), pred_hit=sum(any_pred), gt=len(any_gt), gt_hit=sum(any_gt))

    def summary(pred: int, pred_hit: int, gt: int, gt_hit: int) -> dict:
        return {
            "precision": _ratio(pred_hit, pred),
            "recall": _ratio(gt_hit, gt),
            "predicted": pred,
            "ground_truth": gt,
        }

    phrases = sorted(set(counts["pred"]) | set(counts["gt"]))
    return {
        "iou": iou,
        "match": match,
        "images": images,
        "overall": summary(*(sum(counts[n].values()) for n in ("pred", "pred_hit", "gt", "gt_hit"))),
        "box_only": summary(box_only["pred"], box_only["pred_hit"], box_only["gt"], box_only["gt_hit"]),
        "per_phrase": {
            p: summary(*(counts[n][p] for n in ("pred", "pred_hit", "gt", "gt_hit"))) for p in phrases
        },
    }


def ground_truth_by_key(
    spec: str, shard_size: int = 1000, image_root: str | None = None
) -> dict[str, list[dict]]:
    """{key: ground-truth regions} of every record of an input that carries them (e.g. COCO instances)."""
    truth = {r.key: r.ground_truth for u in plan_units(spec, shard_size, image_root) for r in read_unit(u)}
    truth = {key: regions for key, regions in truth.items() if regions is not None}
    if not truth:
        raise ValueError(f"input {spec!r} carries no ground-truth regions to compare with")
    return truth


def paired_regions(output_dir: str, truth: dict[str, list[dict]]) -> Iterator[tuple[list[dict], list[dict]]]:
    """(pseudo regions, ground-truth regions) of every output image that has ground truth, joined by key."""
    for key, _, record in iter_output(output_dir):
        if key in truth:
            yield record["regions"], truth[key]


def report_markdown(report: dict) -> str:
    """The report as a markdown table a person can skim: overall, phrase-blind, then every phrase."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [("**all phrases**", report["overall"]), ("**boxes, any phrase**", report["box_only"])]
    rows += sorted(report["per_phrase"].items(), key=lambda kv: -kv[1]["ground_truth"])
    lines = [
        f"VESL pseudo labels vs ground truth: {report['images']} images, IoU >= {report['iou']}, "
        f"phrases matched by {report['match']}",
        "",
        "| phrase | precision | recall | predicted | ground truth |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {cell(r['precision'])} | {cell(r['recall'])} | {r['predicted']} | {r['ground_truth']} |"
        for name, r in rows
    ]
    return "\n".join(lines) + "\n"
