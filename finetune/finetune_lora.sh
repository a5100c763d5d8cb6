#!/usr/bin/env bash
# Stage 2 with LoRA (add "--bits 4" for QLoRA); merge afterwards with scripts/merge_lora.py.
# Usage: finetune/finetune_lora.sh TOWER LLM DATA.json IMAGE_DIR STAGE1_OUT OUT [extra flags]
set -euo pipefail
tower=$1 llm=$2 data=$3 images=$4 stage1=$5 out=$6; shift 6
deepspeed finetune/train.py --deepspeed finetune/zero2.json \
  --lora_enable True --lora_r 128 --lora_alpha 256 \
  --model_name_or_path "$llm" --vision_tower "$tower" --version vicuna_v1 \
  --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 \
  --pretrain_mm_mlp_adapter "$stage1/mm_projector.safetensors" \
  --data_path "$data" --image_folder "$images" --output_dir "$out" --group_by_modality_length True \
  --bf16 True --num_train_epochs 1 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \
  --learning_rate 2e-4 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine \
  --model_max_length 2048 --gradient_checkpointing True --dataloader_num_workers 4 \
  --save_strategy steps --save_steps 50000 --save_total_limit 1 --logging_steps 1 --report_to tensorboard "$@"
