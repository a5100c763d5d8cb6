"""The real-photo gallery of docs/real_photos.md: every sample photo (and the hard variants) decoded as
the library decodes it, with its annotated box in green and a tiny untrained CLOC grounding head's box
in red.

    python scripts/real_photo_gallery.py --out docs/real_photos.png

The red boxes show that the path runs on camera pictures (EXIF, alpha, 16-bit, odd sizes), not that it
finds anything: the model is random and knows no quokkas.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from cloc_mllm import CLOCConfig, CLOCModel
from cloc_mllm.data.images import upright_rgb
from cloc_mllm.data.sample_photos import hard_variants
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval.benchmarks import GroundingItem
from cloc_mllm.eval.encoder import grounding_head_rows
from cloc_mllm.visualize import draw_boxes, image_grid

ANNOTATION, PREDICTION = (60, 180, 75), (230, 25, 75)


def tiny_grounder(captions: list[str]):
    """The ``tiny`` preset with random weights and a tokenizer trained on the captions (seconds on a CPU)."""
    tokenizer = train_world_tokenizer(captions, vocab_size=300)
    torch.manual_seed(0)
    config = CLOCConfig.from_preset("tiny", text_config={"vocab_size": len(tokenizer)})
    return CLOCModel(config).eval(), tokenizer


def render_gallery(out: str | Path, side: int = 220, columns: int = 4) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        photos = hard_variants(tmp)
        if not photos:
            raise SystemExit(
                "no sample photos: pip install scikit-image matplotlib imgaug (docs/real_photos.md)"
            )
        model, tokenizer = tiny_grounder([p.caption for p in photos])
        items = [GroundingItem(p.name, str(p.path), p.caption, p.boxes) for p in photos]
        transform = ImageTransform.from_size(model.config.vision_config.image_size, mode="pad")
        with torch.no_grad():
            rows = grounding_head_rows(model, tokenizer, items, transform)
        tiles = []
        for photo, row in zip(photos, rows, strict=True):
            with Image.open(photo.path) as raw:
                mode, stored = raw.mode, raw.size
                image = upright_rgb(raw)
            width, height = image.size
            boxes = [[b[0] / width, b[1] / height, b[2] / width, b[3] / height] for b in photo.boxes]
            boxes += row["boxes"]
            labels = list(photo.labels) + ["tiny head (random)"]
            colours = [ANNOTATION] * len(photo.boxes) + [PREDICTION]
            tile = draw_boxes(image, boxes, labels, colours, normalized=True, width=max(2, width // 150))
            tile.thumbnail((side, side))
            caption = Image.new("RGB", (side, 14), "white")
            ImageDraw.Draw(caption).text((2, 1), f"{photo.name} {mode} {stored[0]}x{stored[1]}", fill="black")
            framed = Image.new("RGB", (side, tile.height + 14), "white")
            framed.paste(tile, (0, 0))
            framed.paste(caption, (0, tile.height))
            tiles.append(framed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(tiles, columns=columns).save(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/real_photos.png")
    parser.add_argument("--side", type=int, default=220, help="longer side of each tile, pixels")
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args(argv)
    path = render_gallery(args.out, args.side, args.columns)
    print(f"gallery: {path}")
    return path


if __name__ == "__main__":
    main()
