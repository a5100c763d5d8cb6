"""Pretrain a CLOC encoder or the CLIP-only baseline (see docs/pretraining.md).

python pretrain/train.py --config pretrain/configs/tiny_synthetic.yaml --output-dir runs/cloc
torchrun --nproc_per_node 8 pretrain/train.py --config ... --output-dir runs/cloc
deepspeed pretrain/train.py --deepspeed pretrain/ds_zero2.json --config ... --output-dir runs/cloc
"""

import sys

from cloc_mllm.pretraining import main

if __name__ == "__main__":
    sys.exit(main())
