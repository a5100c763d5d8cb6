"""The pretraining command (``pretrain/train.py``, ``cloc-mllm pretrain``; docs/pretraining.md).

It sits above both ``training`` and ``eval``: the trainer takes its periodic evaluation as a callback
(``eval.periodic.periodic_evaluator``), so ``training`` never imports ``eval``.

    python pretrain/train.py --config pretrain/configs/tiny_synthetic.yaml --output-dir runs/cloc
    torchrun --nproc_per_node 8 pretrain/train.py --config ... --output-dir runs/cloc
"""

from __future__ import annotations

import logging
import os

from cloc_mllm.eval.periodic import periodic_evaluator
from cloc_mllm.training import NonFiniteLossError, parse_args, train


def main(argv: list[str] | None = None) -> int:
    """Train; exit status 2 when the loss turned non-finite (the last good checkpoint is kept)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        final = train(config, make_evaluator=periodic_evaluator)
    except NonFiniteLossError as exc:
        logging.getLogger("pretrain").error("%s", exc)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0
