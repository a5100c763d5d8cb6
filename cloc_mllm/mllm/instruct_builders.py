"""RefCOCO/RefCOCO+/RefCOCOg (refer layout) and Flickr30k Entities -> LLaVA instruction json.

Two kinds of chat turns, boxes in Ferret's 0-999 text (``box_text.format_box``), relative to the
original image: **grounding** ("Where is the man on the left?" -> "[x1, y1, x2, y2]", or with
``point_grid`` "<cell_k> [x1, y1, x2, y2]", the tower cell of the box centre first: ``mllm.pointing``) and
**referring** ("What is in [x1, y1, x2, y2]?" -> the expression). With ``region_token`` a referring question also
carries a ``<region>`` placeholder after the box and the record lists that box under ``"regions"``
(Ferret*). A third kind, **phrase**, is the grounded-phrase warm-up for the ``plain`` template: the
expression alone, answered by the box's numbers, so that the first digit directly follows the object's
words (" the man on the left" -> "x1, y1, x2, y2"). Turns about one image are grouped into
conversations of up to ``turns_per_record`` so the image is encoded once for several answers.

    python -m cloc_mllm.mllm.instruct_builders refer DATA_ROOT --dataset refcoco --split train --out x.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cloc_mllm.atomic_io import write_text_atomic
from cloc_mllm.box_text import format_box, format_box_numbers
from cloc_mllm.data.flickr30k import FlickrPhrase, load_flickr30k_entities
from cloc_mllm.data.refer import RefRecord, load_refer
from cloc_mllm.mllm.pointing import pointed_box
from cloc_mllm.mllm.templates import IMAGE_TOKEN, REGION_TOKEN

GROUNDING_QUESTIONS = ("Where is {}?", "Give the box of {}.", "Locate {} in the image.")
REFERRING_QUESTIONS = ("What is in {}?", "What object is at {}?")
CHAT_KINDS = ("grounding", "referring")
KINDS = (*CHAT_KINDS, "phrase")

Box = tuple[float, float, float, float]


def grounding_prompt(expression: str, template: str = GROUNDING_QUESTIONS[0]) -> str:
    """The grounding question used for evaluation: the first training template, the expression put
    mid-sentence exactly as in training ("The green circle" -> "Where is the green circle?")."""
    return template.format(mid_sentence(expression))


def referring_prompt(box: Box, region_token: bool = False) -> str:
    """The referring question used for evaluation: the first training template."""
    return REFERRING_QUESTIONS[0].format(_box_mention(box, region_token))


@dataclass(frozen=True)
class Fact:
    """One thing to ask about: an expression and its boxes (normalised xyxy) in one image."""

    image: str
    expression: str
    boxes: tuple[Box, ...]


def _box_mention(box: Box, region_token: bool) -> str:
    return f"{format_box(box)} {REGION_TOKEN}" if region_token else format_box(box)


def mid_sentence(expression: str) -> str:
    """Lower-case a capital that only marks a sentence start ("The dog" -> "the dog", not "TV")."""
    if expression[:1].isupper() and not expression[1:2].isupper():
        return expression[0].lower() + expression[1:]
    return expression


def _normalised(box: Sequence[float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def _image_size(path: str, width: int, height: int) -> tuple[int, int]:
    """The annotation's size, or the image file's when the annotation has none."""
    if width > 0 and height > 0:
        return width, height
    with Image.open(path) as image:
        return image.size


def refer_facts(records: Sequence[RefRecord]) -> list[Fact]:
    """One fact per (referred object, expression)."""
    facts = []
    for rec in records:
        box = _normalised(rec.box, *_image_size(rec.image_path, rec.width, rec.height))
        facts += [Fact(rec.image_path, sentence, (box,)) for sentence in rec.sentences]
    return facts


def flickr_facts(records: Sequence[FlickrPhrase]) -> list[Fact]:
    """One fact per (sentence, phrase); a phrase may have several boxes (all are answered)."""
    facts = []
    for rec in records:
        size = _image_size(rec.image_path, rec.width, rec.height)
        facts.append(Fact(rec.image_path, rec.phrase, tuple(_normalised(b, *size) for b in rec.boxes)))
    return facts


def _turn(
    fact: Fact, kind: str, rng: random.Random, region_token: bool, point_grid: int = 0
) -> tuple[str, str, list[Box]]:
    """(question, answer, boxes referred to by <region> placeholders in the question)."""
    if kind == "phrase":
        # The leading space makes the first word tokenize as it does mid-sentence.
        answer = "; ".join(format_box_numbers(b) for b in fact.boxes)
        return " " + mid_sentence(fact.expression), answer, []
    if kind == "grounding":
        question = rng.choice(GROUNDING_QUESTIONS).format(mid_sentence(fact.expression))
        answer = ", ".join(pointed_box(b, point_grid) if point_grid else format_box(b) for b in fact.boxes)
        return question, answer, []
    box = fact.boxes[0]
    question = rng.choice(REFERRING_QUESTIONS).format(_box_mention(box, region_token))
    return question, fact.expression, [box] if region_token else []


def facts_to_conversations(
    facts: Sequence[Fact],
    name: str,
    kinds: Sequence[str] = KINDS,
    turns_per_record: int = 3,
    region_token: bool = False,
    image_root: str | Path | None = None,
    seed: int = 0,
    point_grid: int = 0,
) -> list[dict]:
    """LLaVA records: the facts of each image, shuffled, ``turns_per_record`` per conversation.

    Each turn's kind is drawn from ``kinds``. ``image`` is relative to ``image_root`` when given.
    ``phrase`` records are for the ``plain`` template and cannot be mixed with the chat kinds.
    ``point_grid``: grounding answers point at the cell of each box centre on a tower of that many
    patches a side (a LLaVA built with ``mm_point_cells``).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {KINDS}, got {list(kinds)}")
    if "phrase" in kinds and len(set(kinds)) > 1:
        raise ValueError(
            f"phrase turns (plain template) cannot share a file with chat turns, got {list(kinds)}"
        )
    rng = random.Random(seed)
    by_image: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_image[fact.image].append(fact)
    records = []
    for image, image_facts in by_image.items():
        rng.shuffle(image_facts)
        path = os.path.relpath(image, image_root) if image_root else str(Path(image).resolve())
        for start in range(0, len(image_facts), turns_per_record):
            turns, regions = [], []
            for fact in image_facts[start : start + turns_per_record]:
                question, answer, referred = _turn(fact, rng.choice(list(kinds)), rng, region_token, point_grid)
                prefix = f"{IMAGE_TOKEN}\n" if not turns else ""
                turns += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
                regions += [list(b) for b in referred]
            record = {"id": f"{name}-{Path(image).stem}-{start // turns_per_record}", "image": path}
            record["conversations"] = turns
            if regions:
                record["regions"] = regions
            records.append(record)
    return records


def write_records(records: list[dict], out_path: str | Path) -> None:
    """The json list, written atomically."""
    write_text_atomic(out_path, json.dumps(records))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=["refer", "flickr30k"])
    parser.add_argument("root", help="refer DATA root, or the Flickr30k Entities root")
    parser.add_argument("--dataset", default="refcoco", help="refcoco | refcoco+ | refcocog (refer only)")
    parser.add_argument("--split_by", default="unc", help="unc | umd | google (refer only)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_dir", default=None, help="images, when not in the layout's default place")
    parser.add_argument("--kinds", default="grounding,referring")
    parser.add_argument("--turns_per_record", type=int, default=3)
    parser.add_argument("--region_token", action="store_true", help="add <region> after referred boxes")
    parser.add_argument("--image_root", default=None, help="write image paths relative to this dir")
    parser.add_argument(
        "--point_grid", type=int, default=0, help="grounding answers point first: tower patches per side (0 = no)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.source == "refer":
        facts = refer_facts(load_refer(args.root, args.dataset, args.split_by, args.split, args.image_dir))
        name = f"{args.dataset}-{args.split}"
    else:
        facts = flickr_facts(load_flickr30k_entities(args.root, args.split, args.image_dir))
        name = f"flickr30k-{args.split}"
    records = facts_to_conversations(
        facts,
        name,
        args.kinds.split(","),
        args.turns_per_record,
        args.region_token,
        args.image_root,
        args.seed,
        args.point_grid,
    )
    write_records(records, args.out)
    print(f"{args.out}: {len(records)} conversations, {len(facts)} facts")


if __name__ == "__main__":
    main()
