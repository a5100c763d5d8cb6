"""Evaluate a CLOC / CLIP encoder or a finetuned LLaVA; see cloc_mllm.eval.runner and docs/evaluation.md.

python eval/run.py --suite all --model DIR --data-root DIR --out results/X
torchrun --nproc_per_node 8 eval/run.py --suite grounding --model LLAVA_DIR --data-root DATA --out results/Y
"""

from cloc_mllm.eval.runner import main

if __name__ == "__main__":
    main()
