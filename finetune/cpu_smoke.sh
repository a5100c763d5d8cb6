#!/usr/bin/env bash
# Two CPU ranks under DeepSpeed (gloo) on the synthetic world: the CI-sized run. --use_cpu is required
# on machines without GPUs (otherwise the ranks do not see each other).
# Usage: finetune/cpu_smoke.sh TOWER LLM WORLD_DIR OUT [zero2|zero3]
set -euo pipefail
tower=$1 llm=$2 world=$3 out=$4 stage=${5:-zero2}
deepspeed --num_gpus 2 finetune/train.py --deepspeed "finetune/$stage.json" --use_cpu \
  --model_name_or_path "$llm" --vision_tower "$tower" \
  --data_path "$world/llava/train.json" --image_folder "$world/images" --output_dir "$out" \
  --per_device_train_batch_size 2 --max_steps 20 --learning_rate 1e-3 --model_max_length 320 \
  --logging_steps 1 --save_strategy no --report_to none
