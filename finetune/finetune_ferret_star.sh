#!/usr/bin/env bash
# Ferret*: region prompts through CLOC's Prompter. TOWER must be the whole CLOC checkpoint (not an
# exported tower), and the data should come from the instruction builders with --region_token.
# Usage: finetune/finetune_ferret_star.sh CLOC_CKPT LLM DATA.json IMAGE_DIR OUT [extra flags]
set -euo pipefail
cloc=$1 llm=$2 data=$3 images=$4 out=$5; shift 5
deepspeed finetune/train.py --deepspeed finetune/zero2.json \
  --model_name_or_path "$llm" --vision_tower "$cloc" --region_prompts True --version vicuna_v1 \
  --data_path "$data" --image_folder "$images" --output_dir "$out" \
  --bf16 True --num_train_epochs 1 --per_device_train_batch_size 16 \
  --learning_rate 2e-5 --warmup_ratio 0.03 --lr_scheduler_type cosine \
  --model_max_length 2048 --gradient_checkpointing True --logging_steps 1 --report_to tensorboard "$@"
