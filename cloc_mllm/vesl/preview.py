"""A PNG contact sheet of VESL output: each image with its pseudo boxes, phrases, scores and caption.

Looking at a few dozen labelled images catches what no aggregate number does (boxes shifted by a padding
bug, phrases that are all "background", a threshold that keeps noise).
"""

from __future__ import annotations

import io
import itertools
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cloc_mllm.atomic_io import atomic_path
from cloc_mllm.visualize import draw_boxes, image_grid

from .writer import iter_output

GROUND_TRUTH_COLOUR = (255, 255, 255)


def labelled_tile(
    image: Image.Image, record: dict, ground_truth: list[dict] | None = None, side: int = 320
) -> Image.Image:
    """The image scaled to ``side`` on its longer edge, boxes drawn, caption wrapped underneath."""
    scale = side / max(image.width, image.height)
    image = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
    if ground_truth:
        gt_boxes = [[v * scale for v in r["box"]] for r in ground_truth]
        image = draw_boxes(image, gt_boxes, colours=[GROUND_TRUTH_COLOUR] * len(gt_boxes), width=1)
    regions = record["regions"]
    image = draw_boxes(
        image,
        [[v * scale for v in r["box"]] for r in regions],
        [f"{r['phrase']} {r['score']:.2f}" for r in regions],
    )
    font = ImageFont.load_default()
    lines = textwrap.wrap(record["caption"], width=max(20, side // 6))[:4]
    tile = Image.new("RGB", (side, image.height + 12 * len(lines) + 4), "white")
    tile.paste(image, (0, 0))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
        draw.text((2, image.height + 2 + 12 * i), line, fill=(0, 0, 0), font=font)
    return tile


def render_preview(
    output_dir: str | Path,
    path: str | Path,
    num_images: int = 16,
    columns: int = 4,
    ground_truth: dict[str, list[dict]] | None = None,
    side: int = 320,
) -> Path:
    """Write a grid PNG of the first ``num_images`` labelled images; ground truth (by key) in white."""
    tiles = [
        labelled_tile(Image.open(io.BytesIO(jpeg)), record, (ground_truth or {}).get(key), side)
        for key, jpeg, record in itertools.islice(iter_output(output_dir), num_images)
    ]
    if not tiles:
        raise ValueError(f"{output_dir}: no finished VESL shards to preview")
    path = Path(path)
    with atomic_path(path) as tmp:
        image_grid(tiles, columns=min(columns, len(tiles))).save(tmp)
    return path
