#!/usr/bin/env bash
# Stage 1 (LLaVA-1.5 "pretrain"): align the projector; tower and LLM frozen; saves mm_projector.safetensors.
# Usage: finetune/pretrain_projector.sh TOWER LLM DATA.json IMAGE_DIR OUT [extra flags]
set -euo pipefail
tower=$1 llm=$2 data=$3 images=$4 out=$5; shift 5
deepspeed finetune/train.py --deepspeed finetune/zero2.json \
  --model_name_or_path "$llm" --vision_tower "$tower" --version vicuna_v1 \
  --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --tune_mm_mlp_adapter True \
  --data_path "$data" --image_folder "$images" --output_dir "$out" \
  --bf16 True --num_train_epochs 1 --per_device_train_batch_size 32 --gradient_accumulation_steps 1 \
  --learning_rate 1e-3 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
  --model_max_length 2048 --gradient_checkpointing True --dataloader_num_workers 4 \
  --save_strategy steps --save_steps 24000 --save_total_limit 1 --logging_steps 1 --report_to tensorboard "$@"
