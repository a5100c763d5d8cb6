"""Finetune a LLaVA on a CLOC (or CLIP) vision tower; ``python finetune/train.py --help`` for the flags.

    deepspeed finetune/train.py --deepspeed finetune/zero2.json --model_name_or_path LLM \
        --vision_tower TOWER --data_path data.json --image_folder images --output_dir out
"""

from transformers import HfArgumentParser

from cloc_mllm.mllm.training import DataArguments, ModelArguments, TrainingArguments, train


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    train(*parser.parse_args_into_dataclasses())


if __name__ == "__main__":
    main()
