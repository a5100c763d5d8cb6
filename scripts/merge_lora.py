"""Merge a LoRA/QLoRA finetuning output into a plain Llava checkpoint (loadable without peft).

python scripts/merge_lora.py --adapter OUT_LORA --out OUT_MERGED
"""

import argparse

from cloc_mllm.mllm.lora import merge_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="output dir of finetune/train.py --lora_enable")
    parser.add_argument("--out", required=True, help="where to write the merged model and processor")
    args = parser.parse_args()
    merge_lora(args.adapter, args.out)
    print(f"merged model written to {args.out}")


if __name__ == "__main__":
    main()
