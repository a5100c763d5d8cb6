"""A main-job run whose refer images are transposed and whose boxes are not: column-major tokens.

The synthetic world is symmetric in x and y (square images, uniform placement), so the only things
that tell the LLaVA's x from its y are the answer's order (x1 before y1) and the tower's row-major
token order (a row is a stretch of the LLM's sequence, a column is every 8th token). Transposing
every image before the tower while keeping every box, question and answer as it was is the same
LLaVA fed its patch tokens column by column: if the row is read because of the raster order, the
column is now the coordinate read; if because of the answer order, y still is.

    python -m experiments.llava_prompt_order.transpose_run --run RUN --out RUN_T
    python -m experiments.llava_prompt_order.run --run RUN_T ...   # as on RUN

RUN_T links RUN's towers, LLM and world files; only ``world/refer/images`` is new (transposed copies).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image
from tqdm import tqdm


def transpose_images(source: Path, target: Path) -> int:
    """Every image under ``source`` transposed (x <-> y) to the same relative path under ``target``."""
    paths = sorted(p for p in source.rglob("*") if p.is_file())
    for path in tqdm(paths, desc="transpose"):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            if image.width != image.height:
                raise ValueError(f"{path}: {image.size} is not square; a transposed box would not fit it")
            image.transpose(Image.Transpose.TRANSPOSE).save(out, quality=95)  # the world's own JPEG quality
    return len(paths)


def transposed_run(run: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pretrain", "finetune"):
        link = out / name
        if not link.exists():
            link.symlink_to((run / name).resolve())
    world, refer = out / "world", out / "world" / "refer"
    refer.mkdir(parents=True, exist_ok=True)
    for entry in (run / "world").iterdir():
        if entry.name != "refer" and not (world / entry.name).exists():
            (world / entry.name).symlink_to(entry.resolve())
    for entry in (run / "world" / "refer").iterdir():
        if entry.name != "images" and not (refer / entry.name).exists():
            shutil.copytree(entry, refer / entry.name)  # annotations: boxes in the original frame
    if not (refer / "images").exists():  # written whole, then renamed: a killed run leaves no half folder
        partial = refer / "images.partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(transpose_images(run / "world" / "refer" / "images", partial), "images transposed")
        partial.rename(refer / "images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a main-job run directory (world, pretrain, finetune/llm)")
    parser.add_argument("--out", required=True, help="the transposed run directory to write")
    args = parser.parse_args()
    transposed_run(Path(args.run), Path(args.out))


if __name__ == "__main__":
    main()
