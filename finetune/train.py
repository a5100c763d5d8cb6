"""Finetune a LLaVA on a CLOC (or CLIP) vision tower; ``python finetune/train.py --help`` for the flags.

    deepspeed finetune/train.py --deepspeed finetune/zero2.json --model_name_or_path LLM \
        --vision_tower TOWER --data_path data.json --image_folder images --output_dir out
"""

from cloc_mllm.mllm.training import main

if __name__ == "__main__":
    main()
