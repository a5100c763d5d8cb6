"""Evaluate a CLOC / CLIP encoder or a finetuned LLaVA; see cloc_mllm.eval.runner and docs/evaluation.md.

python eval/run.py --suite all --model DIR --data-root DIR --out results/X
torchrun --nproc_per_node 8 eval/run.py --suite grounding --model LLAVA_DIR --data-root DATA --out results/Y
"""

import logging
import sys

from transformers import HfArgumentParser

from cloc_mllm.eval.runner import EvalArguments, run_evaluation


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_evaluation(args)


if __name__ == "__main__":
    main(sys.argv[1:])
