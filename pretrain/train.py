"""Pretrain a CLOC encoder or the CLIP-only baseline (see docs/pretraining.md).

python pretrain/train.py --config pretrain/configs/tiny_synthetic.yaml --output-dir runs/cloc
torchrun --nproc_per_node 8 pretrain/train.py --config ... --output-dir runs/cloc
deepspeed pretrain/train.py --deepspeed pretrain/ds_zero2.json --config ... --output-dir runs/cloc
"""

from __future__ import annotations

import logging
import os
import sys

from cloc_mllm.training import NonFiniteLossError, parse_args, train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        final = train(config)
    except NonFiniteLossError as exc:
        logging.getLogger("pretrain").error("%s", exc)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
