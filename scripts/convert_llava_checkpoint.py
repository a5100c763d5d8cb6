"""Convert an original LLaVA-1.5 checkpoint (LlavaLlamaForCausalLM layout) to transformers' Llava.

python scripts/convert_llava_checkpoint.py --src llava-v1.5-7b --out llava-hf --vision_tower clip-dir
"""

import argparse

from cloc_mllm.mllm.convert_llava import convert_llava_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="dir with config.json (mm_* keys), weights, tokenizer")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--vision_tower", default=None, help="local tower dir (default: config mm_vision_tower)"
    )
    args = parser.parse_args()
    print(f"converted: {convert_llava_checkpoint(args.src, args.out, args.vision_tower)}")


if __name__ == "__main__":
    main()
