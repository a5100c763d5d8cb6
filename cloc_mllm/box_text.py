"""Boxes as text, Ferret style: ``[x1, y1, x2, y2]`` integers 0-999 relative to the original image.

``format_box`` writes the one canonical form used in training data; ``parse_boxes`` reads what a model
answers, which is messier: ints or floats, 0-999 / 0-1 / pixel scales, several boxes, stray text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Box = tuple[float, float, float, float]

BOX_TEXT_SCALE = 999
_NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_BOX_PATTERN = re.compile(
    rf"[\[\(]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\]\)]"
)


def format_box(box: Sequence[float]) -> str:
    """Normalised xyxy in [0, 1] -> ``"[x1, y1, x2, y2]"`` with integers 0-999."""
    return "[" + format_box_numbers(box) + "]"


def format_box_numbers(box: Sequence[float]) -> str:
    """The box's numbers without brackets, ``"x1, y1, x2, y2"``: the grounded-phrase warm-up answers
    this right after the object's words, so x1's first digit is the very next token."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers, got {len(box)}: {box!r}")
    ints = [min(BOX_TEXT_SCALE, max(0, round(float(v) * BOX_TEXT_SCALE))) for v in box]
    return ", ".join(str(v) for v in ints)


def _normalise(values: list[float], image_size: tuple[int, int] | None) -> Box | None:
    """Guess the scale of one parsed box and map it to normalised xyxy (None when impossible)."""
    x1, y1, x2, y2 = values
    biggest = max(abs(v) for v in values)
    if biggest <= 1.0:
        scaled = values
    elif biggest <= BOX_TEXT_SCALE:
        scaled = [v / BOX_TEXT_SCALE for v in values]
    elif image_size is not None:
        width, height = image_size
        scaled = [x1 / width, y1 / height, x2 / width, y2 / height]
    else:
        return None
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in scaled)
    if x2 < x1:
        x1, x2 = x2, x1
    if y2 < y1:
        y1, y2 = y2, y1
    return (x1, y1, x2, y2)


def parse_boxes(text: str, image_size: tuple[int, int] | None = None) -> list[Box]:
    """All boxes in ``text`` as normalised xyxy, in order of appearance.

    Scale is decided per box: all numbers <= 1 -> already normalised; <= 999 -> Ferret's 0-999;
    larger -> pixels of ``image_size`` = (width, height), or dropped when the size is unknown.
    Unparseable text gives an empty list, which evaluation counts as a miss.
    """
    boxes = []
    for match in _BOX_PATTERN.finditer(text or ""):
        box = _normalise([float(g) for g in match.groups()], image_size)
        if box is not None:
            boxes.append(box)
    return boxes
