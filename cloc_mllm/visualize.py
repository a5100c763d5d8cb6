"""Pictures a person looks at: boxes with labels drawn on images, and grids of such images.

Used by the synthetic world preview, VESL previews, evaluation galleries and the chat demo, so boxes are
drawn one way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# Distinct outline colours, cycled per box when the caller gives none.
BOX_COLOURS = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 0, 0), (255, 255, 255),
]  # fmt: skip


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    colours: Sequence[tuple[int, int, int]] | None = None,
    normalized: bool = False,
    width: int = 2,
) -> Image.Image:
    """A copy of ``image`` with each ``(x1, y1, x2, y2)`` box outlined and, if given, labelled.

    ``boxes`` are pixels, or normalised to [0, 1] when ``normalized`` is True. The label sits on a filled
    strip above the box (inside it when the box touches the top edge), in the box's colour.
    """
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes but {len(labels)} labels")
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    scale = (out.width, out.height, out.width, out.height) if normalized else (1, 1, 1, 1)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) * s for v, s in zip(box, scale, strict=True))
        colour = tuple(colours[i]) if colours is not None else BOX_COLOURS[i % len(BOX_COLOURS)]
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=width)
        if labels is None or not labels[i]:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), labels[i], font=font)
        text_w, text_h = right - left, bottom - top + 2
        ty = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle((x1, ty, x1 + text_w + 2, ty + text_h), fill=colour)
        ink = (0, 0, 0) if sum(colour) > 382 else (255, 255, 255)
        draw.text((x1 + 1, ty - top), labels[i], fill=ink, font=font)
    return out


def image_grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile images row by row on a white canvas; each cell is as big as the largest image."""
    if not images:
        raise ValueError("image_grid: no images")
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(im.convert("RGB"), (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return grid
