"""Finetune a LLaVA on a CLOC (or CLIP) vision tower; ``python finetune/train.py --help`` for the flags.

    deepspeed finetune/train.py --deepspeed finetune/zero2.json --model_name_or_path LLM \
        --vision_tower TOWER --data_path data.json --image_folder images --output_dir out
"""

import torch.distributed as dist
from transformers import HfArgumentParser

from cloc_mllm.mllm.training import DataArguments, ModelArguments, TrainingArguments, train


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    try:
        train(*parser.parse_args_into_dataclasses())
    finally:
        # Tear the process group down before interpreter exit: left alive, its communication threads
        # are destroyed while still joinable and the rank aborts ("terminate called without an active
        # exception") after a successful run, which the launcher reports as a failure.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
