"""Ask a finetuned LLaVA about one image from the command line; print the answer and its boxes.

python -m cloc_mllm.mllm.chat --model OUT --image x.jpg --prompt "Where is the red circle?" --draw y.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from PIL import Image

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.data.images import upright_rgb
from cloc_mllm.mllm.inference import generate_answers, load_mllm
from cloc_mllm.visualize import draw_boxes


def _box(text: str) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a region is x1,y1,x2,y2 (normalised), got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a finetuned LLaVA about one image.")
    parser.add_argument("--model", required=True, help="finetuned model dir (plain, cloc_llava or LoRA)")
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", required=True, help="the question; boxes as [x1, y1, x2, y2] 0-999")
    parser.add_argument(
        "--region",
        type=_box,
        action="append",
        default=None,
        help="normalised x1,y1,x2,y2 for each <region> in the prompt (region-prompt models)",
    )
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--draw", default=None, help="write the image with the answer's boxes to this PNG")
    args = parser.parse_args(argv)

    model, processor = load_mllm(args.model, device=args.device)
    with Image.open(args.image) as image:
        image = upright_rgb(image)  # boxes are answered and drawn on the photo as a person sees it
    regions = [args.region] if args.region else None
    answer = generate_answers(model, processor, [image], [args.prompt], args.max_new_tokens, 1, regions)[0]
    boxes = parse_boxes(answer, image_size=image.size)
    print(answer)
    for box in boxes:
        pixels = [round(v * s) for v, s in zip(box, image.size * 2, strict=True)]
        print(f"box (normalised) {[round(v, 3) for v in box]}  (pixels) {pixels}")
    if args.draw:
        draw_boxes(image, boxes, labels=[f"{i}" for i in range(len(boxes))], normalized=True).save(args.draw)
        print(f"drawn: {args.draw}")


if __name__ == "__main__":
    main()
