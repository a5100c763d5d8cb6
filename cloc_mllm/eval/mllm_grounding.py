"""MLLM grounding: ask a finetuned LLaVA "Where is {expression}?" and score the box it writes.

The answer is parsed by the tolerant :func:`~cloc_mllm.box_text.parse_boxes` (0-999, 0-1 or pixel
numbers; several boxes are a ranking for Recall@k). Boxes in answers are relative to the *original*
image (docs/boxes.md), so they are scored against the annotation directly. An empty or unparseable answer
is a miss, as in the published protocols; an unreadable image is counted and left out. A LLaVA whose
answers point first (``<cell_k> [...]``, ``cloc_mllm.mllm.pointing``) is also scored on its pointers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem, score_benchmark
from cloc_mllm.eval.cache import cached_predict_benchmarks
from cloc_mllm.eval.inputs import load_images
from cloc_mllm.eval.sharding import Shard
from cloc_mllm.mllm.instruct_builders import GROUNDING_QUESTIONS, grounding_prompt
from cloc_mllm.mllm.pointing import CELL_PATTERN, cell_of, pixel_cell, tokenizer_grid

# The first of the training data's grounding questions (LLaVA-1.5 style), as a template.
GROUNDING_PROMPT = GROUNDING_QUESTIONS[0]


def mllm_grounding_rows(
    model,
    processor,
    items: Sequence[GroundingItem],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    prompt: str = GROUNDING_PROMPT,
) -> list[dict]:
    """One row per item: the answer, its boxes (normalised xyxy, original image), image size, status."""
    from cloc_mllm.mllm.inference import generate_answers

    images, sizes = load_images(items)
    readable = [i for i, image in enumerate(images) if image is not None]
    answers = generate_answers(
        model,
        processor,
        [images[i] for i in readable],
        [grounding_prompt(items[i].text, prompt) for i in readable],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    rows = [
        {"status": "missing_image", "answer": "", "boxes": [], "image_size": sizes[i]}
        for i in range(len(items))
    ]
    for i, answer in zip(readable, answers, strict=True):
        boxes = parse_boxes(answer, image_size=tuple(sizes[i]))
        status = "ok" if boxes else ("empty_answer" if not answer.strip() else "unparseable")
        rows[i] = {
            "status": status,
            "answer": answer,
            "boxes": [list(b) for b in boxes],
            "image_size": sizes[i],
        }
    return rows


def evaluate_mllm_grounding(
    model,
    processor,
    benchmarks: Sequence[GroundingBenchmark],
    cache_dir: str | Path | None = None,
    shard: Shard | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    prompt: str = GROUNDING_PROMPT,
) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """Metrics per benchmark (per protocol + counts) and the prediction rows (benchmark -> key -> row)."""
    rows = cached_predict_benchmarks(
        benchmarks,
        "mllm_grounding",
        lambda batch: mllm_grounding_rows(model, processor, batch, batch_size, max_new_tokens, prompt),
        cache_dir,
        shard or Shard(),
        batch_size=batch_size * 4,  # several generate batches between cache flushes
        desc="ground",
    )
    metrics = {bench.name: score_benchmark(bench, rows[bench.name]) for bench in benchmarks}
    grid = tokenizer_grid(processor.tokenizer)
    if grid:
        for bench in benchmarks:
            metrics[bench.name]["pointing"] = pointing_scores(bench, rows[bench.name], grid)
    return metrics, rows


def pointing_scores(benchmark: GroundingBenchmark, rows: dict[str, dict], grid: int) -> dict:
    """Of one split's scored answers, the share that point (``named``); whose first pointer names the
    centre cell of a referred box (``right_cell``; ``chance`` = 1 / grid² for one box), or that of some
    annotated object (``object_cell``: landing, whatever the words; None when the split lists no objects);
    and, of the answers that point, those whose first box has its centre in the named cell
    (``box_in_named_cell``: the digits follow the pointer)."""
    scored = [item for item in benchmark.items if rows[item.key].get("status") != "missing_image"]
    named = right = on_object = consistent = 0
    for item in scored:
        row = rows[item.key]
        match = CELL_PATTERN.search(row["answer"])
        if match is None:
            continue
        named += 1
        cell, size = int(match.group(1)), row["image_size"]
        right += any(cell == pixel_cell(box, size, grid) for box in item.boxes)
        on_object += any(cell == pixel_cell(box, size, grid) for box, _ in item.objects)
        consistent += bool(row["boxes"]) and cell == cell_of(row["boxes"][0], grid)
    items = max(1, len(scored))
    return {
        "items": len(scored),
        "named": named / items,
        "right_cell": right / items,
        "object_cell": on_object / items if any(item.objects for item in scored) else None,
        "box_in_named_cell": consistent / named if named else None,
        "chance": 1 / grid**2,
    }
