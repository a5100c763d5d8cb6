"""Finetune a LLaVA on a CLOC (or CLIP) vision tower; ``python finetune/train.py --help`` for the flags.

    deepspeed finetune/train.py --deepspeed finetune/zero2.json --model_name_or_path LLM \
        --vision_tower TOWER --data_path data.json --image_folder images --output_dir out
"""

import torch.distributed as dist
from transformers import HfArgumentParser

from cloc_mllm.mllm.training import DataArguments, ModelArguments, TrainingArguments, train
from cloc_mllm.training.distributed import leave_process_group


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    train(*parser.parse_args_into_dataclasses())
    if dist.is_available() and dist.is_initialized():
        # Tear the process group down together, before interpreter exit. Left alive, its communication
        # threads are destroyed while still joinable and the rank aborts ("terminate called without an
        # active exception") after a successful run; torn down by a rank that finished early (ranks > 0
        # skip the writing of the model), while rank 0 still uses its connections, the same abort was
        # seen. The barrier makes every rank wait for the slowest before any shuts down.
        dist.barrier()
        leave_process_group()


if __name__ == "__main__":
    main()
