"""Answers that point before they write: ``<cell_k> [x1, y1, x2, y2]``.

Every run of this study lands its first answer on some object only 11-14% of the time, though the
LLM reads the words (52-85% of those hits are the referred object). Writing x1's hundreds digit
asks the LLM to find the named object's image tokens *and* to turn their place into the top-left
corner in one step. Here the answer first names the image token that holds the box centre, one of
``grid * grid`` new vocabulary tokens (a 64-way choice on the 8 x 8 tower), which is the content match
a localized tower should make easy; the digits that follow can read the pointed cell from the
answer itself, a mapping the LLM learns from text alone. The result stays a plain LLaVA: the cells
are ordinary added tokens, and the evaluation's box parser reads the bracket after them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.eval.benchmarks import GroundingBenchmark

_CELL = re.compile(r"<cell_(\d+)>")


def cell_tokens(grid: int) -> list[str]:
    """The ``grid * grid`` cell tokens in raster order, the tower's patch-token order."""
    return [f"<cell_{k}>" for k in range(grid * grid)]


def cell_of(box, grid: int) -> int:
    """Raster index of the cell holding a normalised xyxy box's centre."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(grid - 1, int(cy * grid)) * grid + min(grid - 1, int(cx * grid))


def pixel_cell(box, image_size: tuple[int, int], grid: int) -> int:
    """``cell_of`` for a pixel xyxy box on an image of ``image_size`` = (width, height)."""
    width, height = image_size
    return cell_of((box[0] / width, box[1] / height, box[2] / width, box[3] / height), grid)


def point_answers(records: list[dict], grid: int) -> list[dict]:
    """``[x1, ...]`` -> ``<cell_k> [x1, ...]`` in each record's answers (each answer holds one box)."""
    for record in records:
        for turn in record["conversations"][1::2]:
            boxes = parse_boxes(turn["value"])
            if len(boxes) != 1:
                raise ValueError(f"record {record['id']}: an answer with {len(boxes)} boxes cannot point")
            turn["value"] = f"<cell_{cell_of(boxes[0], grid)}> " + turn["value"]
    return records


def llm_with_cells(llm: Path, out: Path, grid: int, seed: int = 0) -> Path:
    """A copy of the plain LLM directory ``llm`` with the cell tokens added (once; reused after).

    Each new row (of the input embeddings and of an untied LM head) is the old rows' mean plus
    per-dimension noise of their spread, so the LM head tells the cells apart from the first step."""
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(llm)
    model = AutoModelForCausalLM.from_pretrained(llm)
    tokenizer.add_tokens(cell_tokens(grid))
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    tables = (model.get_input_embeddings(), model.get_output_embeddings())
    weights = {id(t.weight): t.weight for t in tables if t is not None}.values()  # (V, D) each; one if tied
    with torch.no_grad():
        for weight in weights:
            noise = torch.randn(weight.shape[0] - old, weight.shape[1], generator=generator)
            weight[old:] = weight[:old].mean(dim=0) + noise * weight[:old].std(dim=0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (llm / "llm_source.json").is_file():  # where the weights came from, for the report
        shutil.copy2(llm / "llm_source.json", tmp / "llm_source.json")
    tmp.rename(out)
    return out


def pointing_scores(benchmark: GroundingBenchmark, rows: dict[str, dict], grid: int) -> dict:
    """Of one split's answers: the share that name a cell, that name the referred box's centre cell
    (chance 1 / grid**2), that name the centre cell of some annotated object (landing, whatever the
    words; None when the split lists no objects), and whose box centre lies in the cell they named
    (the digits follow the pointer)."""
    named = right = on_object = consistent = 0
    for item in benchmark.items:
        row = rows[item.key]
        match = _CELL.search(row["answer"])
        if match is None:
            continue
        named += 1
        cell = int(match.group(1))
        size = row["image_size"]
        right += cell == pixel_cell(item.boxes[0], size, grid)
        on_object += any(cell == pixel_cell(box, size, grid) for box, _ in item.objects)
        consistent += bool(row["boxes"]) and cell == cell_of(row["boxes"][0], grid)
    items = len(benchmark.items)
    return {
        "items": items,
        "named": named / items,
        "right_cell": right / items,
        "object_cell": on_object / items if any(item.objects for item in benchmark.items) else None,
        "box_in_named_cell": consistent / named if named else None,
        "chance": 1 / grid**2,
    }
