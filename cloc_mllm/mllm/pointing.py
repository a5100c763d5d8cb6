"""Answers that point before they write: ``<cell_k> [x1, y1, x2, y2]``.

A grounding answer in digits asks the LLM to find the named object's image tokens *and* to turn
their place into x1's hundreds digit in one step. A pointing answer first names the image token that
holds the box centre, one of ``grid * grid`` added vocabulary tokens in the tower's raster order (a
64-way choice on an 8 x 8 tower): the content match a localized tower should make easy. The digits
that follow can read the pointed cell from the answer itself, a mapping learnt from text alone.

On the val splits of the reproduction world (experiments/llava_prompt_order, single-turn records)
LLaVA-CLOC's Acc@0.5 went from 7.3 (digits only) to 16.3 with pointing at 600 stage-2 steps; over 1200
steps LLaVA-CLOC and LLaVA-CLIP both reach about 27, their pointers on the referred box's cell about a
quarter of the time (chance 1.6%): it helps both towers alike.

The model stays a plain LLaVA: the cells are ordinary added tokens (kept when answers are decoded),
and :func:`~cloc_mllm.box_text.parse_boxes` reads the bracket after them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from cloc_mllm.box_text import BOX_TEXT_SCALE, format_box

CELL_PATTERN = re.compile(r"<cell_(\d+)>")
# A pointer and the bracket it introduces, as training answers write them.
_POINTED_BOX = re.compile(r"<cell_(\d+)>\s*\[([^\]]*)\]")
# A Ferret box, and the pointer that may already lead it.
_FERRET_BOX = re.compile(r"(<cell_\d+> )?(\[\d+, \d+, \d+, \d+\])")

Box = tuple[float, float, float, float]


def cell_tokens(grid: int) -> list[str]:
    """The ``grid * grid`` cell tokens in raster order, the order of the tower's patch tokens."""
    if grid <= 0:
        raise ValueError(f"a cell grid needs a positive side, got {grid}")
    return [f"<cell_{k}>" for k in range(grid * grid)]


def cell_of(box: Sequence[float], grid: int) -> int:
    """Raster index of the cell holding a normalised xyxy box's centre."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(grid - 1, max(0, int(cy * grid))) * grid + min(grid - 1, max(0, int(cx * grid)))


def pixel_cell(box: Sequence[float], image_size: Sequence[int], grid: int) -> int:
    """``cell_of`` for a pixel xyxy box on an image of ``image_size`` = (width, height)."""
    width, height = image_size
    return cell_of((box[0] / width, box[1] / height, box[2] / width, box[3] / height), grid)


def pointed(box_text: str, grid: int) -> str:
    """``"[x1, y1, x2, y2]"`` (0-999) led by the cell of the centre of the box *as written*, so the
    pointer and the digits never disagree at a cell edge."""
    return f"<cell_{cell_of(written_box(box_text[1:-1]), grid)}> {box_text}"


def pointed_box(box: Box, grid: int) -> str:
    """A normalised xyxy box as a pointing answer writes it: ``"<cell_k> [x1, y1, x2, y2]"``."""
    return pointed(format_box(box), grid)


def written_box(numbers: str) -> Box:
    """``"x1, y1, x2, y2"`` in 0-999 -> normalised xyxy."""
    x1, y1, x2, y2 = (float(v) / BOX_TEXT_SCALE for v in numbers.split(","))
    return (x1, y1, x2, y2)


def point_records(records: list[dict], grid: int) -> list[dict]:
    """LLaVA records with a pointer before every Ferret box of their answers (questions unchanged: a box
    the user gives is read, not pointed at). Converts existing box-answer data to pointing answers."""
    for record in records:
        for turn in record["conversations"]:
            if turn["from"] == "gpt":
                turn["value"] = _FERRET_BOX.sub(lambda m: m.group(0) if m.group(1) else pointed(m.group(2), grid), turn["value"])
    return records


def tower_grid(vision_config) -> int:
    """Patch tokens per side of a CLIP-format tower: the side of its cell grid."""
    return vision_config.image_size // vision_config.patch_size


def tokenizer_grid(tokenizer: PreTrainedTokenizerBase) -> int:
    """The side of the cell grid whose tokens ``tokenizer`` holds (0 when it has none)."""
    cells = {token for token in tokenizer.get_added_vocab() if CELL_PATTERN.fullmatch(token)}
    grid = math.isqrt(len(cells))
    if cells != set(cell_tokens(grid) if grid else ()):
        raise ValueError(f"the tokenizer holds {len(cells)} cell tokens, not <cell_0>..<cell_(g*g-1)> of a g x g grid")
    return grid


def cell_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the cell tokens ``tokenizer`` holds, in raster order (none when it has none)."""
    grid = tokenizer_grid(tokenizer)
    return tokenizer.convert_tokens_to_ids(cell_tokens(grid)) if grid else []


def check_pointers(text: str, grid: int) -> None:
    """Raise ``ValueError`` unless every pointer in ``text`` is a cell of a ``grid`` x ``grid`` tower
    (0: the model has no cell tokens) and names the cell of the centre of the box that follows it.

    A pointer to the wrong cell would teach the LLM the pointing the evaluation scores as wrong."""
    pointers = CELL_PATTERN.findall(text)
    if not pointers:
        return
    if not grid:
        raise ValueError("answers point at cells (<cell_k>), but the model was built without cell tokens (mm_point_cells)")
    pointed_boxes = _POINTED_BOX.findall(text)
    if len(pointed_boxes) != len(pointers):
        raise ValueError(f"each <cell_k> must lead a box [x1, y1, x2, y2]: {text!r}")
    for cell, numbers in pointed_boxes:
        centre_cell = cell_of(written_box(numbers), grid)
        if int(cell) != centre_cell:
            raise ValueError(f"<cell_{cell}> leads [{numbers}], whose centre is in cell {centre_cell} of the {grid} x {grid} grid")
