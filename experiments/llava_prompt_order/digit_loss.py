"""The per-digit image gain (``cloc_mllm.eval.digit_gain``) of saved LLaVAs on held-out LLaVA json
records (the study's val split in the order it trained with)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloc_mllm.eval.digit_gain import digit_losses
from cloc_mllm.mllm.inference import load_mllm


def llava_records_parser(description: str) -> argparse.ArgumentParser:
    """Saved LLaVAs, held-out grounding records and where to write: this script's and wrong_x1's."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--llava", required=True, nargs="+")
    parser.add_argument("--data", required=True, help="LLaVA json of held-out single-turn grounding records")
    parser.add_argument("--image_folder", required=True)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--out", required=True)
    return parser


def main() -> None:
    args = llava_records_parser(__doc__.split("\n\n")[0]).parse_args()
    results = {
        path: digit_losses(
            *load_mllm(path, device="cpu"), Path(args.data), Path(args.image_folder), args.limit
        )
        for path in args.llava
    }
    Path(args.out).write_text(json.dumps(results, indent=1))
    for path, result in results.items():
        print(
            path,
            f"image token norm {result['image_token_norm']:.1f}, text {result['text_embedding_norm']:.1f}",
        )
        for name, row in result["digits"].items():
            print(
                f"  {name:12s} own {row['own']:.3f}  other image {row['other']:.3f}  gain {row['other'] - row['own']:+.3f}"
            )


if __name__ == "__main__":
    main()
