"""Referring (box -> phrase): ask what is in a box and score the words the MLLM gives back.

One question per referred target (all its expressions are the references), worded as the training
data's first referring question (``instruct_builders.referring_prompt``). The box goes in as Ferret
text ``[x1, y1, x2, y2]``, followed by a ``<region>`` token for models trained with region prompts
(Ferret*'s hybrid mention: the text box and the Prompter's region embedding), exactly as in training. Scores: exact match with a reference, the object's noun appearing in
the answer, word-overlap F1, and corpus CIDEr when ``pycocoevalcap`` is installed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cloc_mllm.eval.benchmarks import GroundingBenchmark, RegionTarget, region_targets
from cloc_mllm.eval.cache import cached_predict_benchmarks
from cloc_mllm.eval.inputs import load_images
from cloc_mllm.eval.metrics import cider, exact_match, noun_match, token_f1
from cloc_mllm.eval.sharding import Shard
from cloc_mllm.mllm.instruct_builders import referring_prompt


def referring_rows(
    model,
    processor,
    targets: Sequence[RegionTarget],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    use_regions: bool = False,
) -> list[dict]:
    """One row per target: the answer and a status (``missing_image``, ``empty_answer`` or ``ok``)."""
    from cloc_mllm.mllm.inference import generate_answers

    images, sizes = load_images(targets)
    readable = [i for i, image in enumerate(images) if image is not None]
    boxes = []
    for i in readable:
        width, height = sizes[i]
        x1, y1, x2, y2 = targets[i].box
        boxes.append((x1 / width, y1 / height, x2 / width, y2 / height))
    prompts = [referring_prompt(box, region_token=use_regions) for box in boxes]
    answers = generate_answers(
        model,
        processor,
        [images[i] for i in readable],
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        regions=[[box] for box in boxes] if use_regions else None,
    )
    rows = [{"status": "missing_image", "answer": ""} for _ in targets]
    for i, answer in zip(readable, answers, strict=True):
        rows[i] = {"status": "ok" if answer.strip() else "empty_answer", "answer": answer}
    return rows


def score_referring(targets: Sequence[RegionTarget], rows: dict[str, dict], skipped: Counter) -> dict:
    """Mean exact / noun / token-F1 over targets with a readable image (empty answers score 0)."""
    scored = [t for t in targets if rows[t.key]["status"] != "missing_image"]
    n = max(len(scored), 1)
    answers = {t.key: rows[t.key]["answer"] for t in scored}
    result = {
        "exact": sum(exact_match(answers[t.key], t.references) for t in scored) / n,
        "noun": sum(noun_match(answers[t.key], t.noun) for t in scored) / n,
        "token_f1": sum(token_f1(answers[t.key], t.references) for t in scored) / n,
        "cider": cider(answers, {t.key: list(t.references) for t in scored}),
        "n": len(scored),
    }
    statuses = Counter(rows[t.key]["status"] for t in targets)
    result["counts"] = {
        "targets": len(targets),
        **{f"status_{k}": v for k, v in sorted(statuses.items())},
        **{f"skipped_{k}": v for k, v in sorted(skipped.items())},
    }
    return result


def evaluate_referring(
    model,
    processor,
    benchmarks: Sequence[GroundingBenchmark],
    cache_dir: str | Path | None = None,
    shard: Shard | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    use_regions: bool = False,
) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """Referring metrics per benchmark and the rows (benchmark -> key -> row)."""
    targets = {bench.name: region_targets(bench) for bench in benchmarks}  # name -> (targets, skipped)
    rows = cached_predict_benchmarks(
        benchmarks,
        "referring",
        lambda batch: referring_rows(model, processor, batch, batch_size, max_new_tokens, use_regions),
        cache_dir,
        shard or Shard(),
        batch_size=batch_size * 4,
        desc="refer",
        items_of=lambda bench: targets[bench.name][0],
    )
    metrics = {}
    for name, (bench_targets, skipped) in targets.items():
        metrics[name] = score_referring(bench_targets, rows[name], skipped)
    return metrics, rows
