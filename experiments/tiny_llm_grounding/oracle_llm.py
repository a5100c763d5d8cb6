"""A tiny LLM that grounds before it meets a tower: the stand-in for a pretrained LLM.

A LLaVA compares towers fairly only if its LLM can already carry what a question asks to where the
answer is written and look it up among image tokens; a pretrained LLM and LLaVA's feature-alignment
stage bring that. The main job's random tiny Llama does not have it, and learning the lookup from a
tower's tokens takes longer than two CPU cores give (docs/mllm.md: oracle tokens, two hops), so every
tower comparison stays at the floor. This stage teaches the lookup once, on ideal tokens built from
the world's *training* annotations (per patch: the class under it, its grid row and column;
``frozen_tokens.oracle_tokens``) through a throwaway projector: grounded-phrase steps first (the box
right after the expression, plain template), then grounding chat steps. The result is saved as a plain
causal-LM directory; every LLaVA of a comparison then starts from this same LLM with a fresh projector,
so the towers stay the only difference.

    python -m experiments.tiny_llm_grounding.oracle_llm --vision_tower TOWER --llm LLM --chat_data train.json \
        --phrase_data phrases.json --image_folder world/refer --refer_root world/refer \
        --phrase_steps 3000 --chat_steps 1000 --out_dir runs/oracle_llm

The tower only gives the image size, patch grid and token width; its weights are never read.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser, PreTrainedTokenizerBase

from cloc_mllm.atomic_io import write_bytes_atomic
from cloc_mllm.eval.benchmarks import load_grounding_benchmarks
from cloc_mllm.eval.mllm_grounding import evaluate_mllm_grounding
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava, build_processor, prepare_tokenizer
from cloc_mllm.mllm.data import LazySupervisedDataset
from cloc_mllm.mllm.training import ModelArguments, set_trainable
from experiments.tiny_llm_grounding.frozen_tokens import (
    finetune_on_tokens,
    images_of,
    refer_instances,
    use_token_table,
    write_loss_log,
)

RESULT_FILE = "oracle_llm.json"


@dataclass
class OracleLLMArguments:
    vision_tower: str = field(metadata={"help": "any exported tower of the comparison (its shape only)"})
    llm: str = field(metadata={"help": "causal LM directory to teach (model + tokenizer)"})
    chat_data: str = field(metadata={"help": "grounding chat records (LLaVA json, vicuna_v1)"})
    image_folder: str = field(metadata={"help": "root of the records' image paths"})
    refer_root: str = field(metadata={"help": "refer-layout root: oracle annotations and evaluation"})
    out_dir: str = field(metadata={"help": "where the taught LLM is saved (+ oracle_llm.json, loss.png)"})
    phrase_data: str | None = field(default=None, metadata={"help": "grounded-phrase records (plain)"})
    phrase_steps: int = field(default=0, metadata={"help": "grounded-phrase steps, before the chat steps"})
    chat_steps: int = field(default=1000, metadata={"help": "grounding chat steps"})
    batch_size: int = field(default=32, metadata={"help": "records per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of each phase (warm-up, cosine)"})
    select_layer: int = field(default=-2, metadata={"help": "mm_vision_select_layer of the LLaVAs to come"})
    benchmarks: str = field(
        default="refcoco_testA,refcoco_testB,refcocog_test",
        metadata={"help": "grounding splits scored on oracle tokens ('' = none): the LLM's ceiling"},
    )
    eval_limit: int = field(default=200, metadata={"help": "items per split (0 = all)"})
    seed: int = field(default=0)

    def __post_init__(self):
        if self.phrase_steps < 0 or self.chat_steps < 0 or not (self.phrase_steps or self.chat_steps):
            raise ValueError(
                f"phrase_steps and chat_steps must be >= 0 and not both 0, got {self.phrase_steps}, {self.chat_steps}"
            )
        if self.phrase_steps and not self.phrase_data:
            raise ValueError("phrase_steps > 0 needs --phrase_data (instruct_builders --kinds phrase)")


def save_language_model(model, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """The LLaVA's language model alone, as a causal-LM directory with its tokenizer (``<image>``
    included, so a LLaVA built on it adds no embedding rows)."""
    llm = AutoModelForCausalLM.from_config(model.config.text_config)
    llm.get_decoder().load_state_dict(model.model.language_model.state_dict())
    llm.get_output_embeddings().load_state_dict(model.lm_head.state_dict())
    llm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def train_oracle_llm(args: OracleLLMArguments) -> dict:
    """Teach ``args.llm`` to ground on oracle tokens, save it to ``args.out_dir``, return the summary
    (losses of each phase, grounding metrics on oracle tokens)."""
    torch.manual_seed(args.seed)
    build = LlavaBuildArgs(args.vision_tower, args.llm, mm_vision_select_layer=args.select_layer)
    model, processor = build_llava(build)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    set_trainable(model, ModelArguments(model_name_or_path=args.llm, vision_tower=args.vision_tower))
    num_tokens = model.config.image_seq_length
    chat = LazySupervisedDataset(args.chat_data, args.image_folder, processor, num_image_tokens=num_tokens)
    datasets = {"chat": chat}
    if args.phrase_steps:
        plain = replace(build, conversation_template="plain")
        tokenizer = prepare_tokenizer(
            copy.deepcopy(processor.tokenizer), "plain", build.model_max_length, False
        )
        plain_processor = build_processor(plain, tokenizer, model.config.vision_config)
        datasets["phrase"] = LazySupervisedDataset(
            args.phrase_data, args.image_folder, plain_processor, num_image_tokens=num_tokens
        )
    names = [b for b in args.benchmarks.split(",") if b]
    benchmarks, not_loaded = [], {}
    if names:  # an empty list would mean every split to load_grounding_benchmarks
        benchmarks, not_loaded = load_grounding_benchmarks(
            args.refer_root, None, names, limit=args.eval_limit or None
        )
    paths = images_of(list(datasets.values()), args.image_folder, benchmarks)
    use_token_table(model, processor, paths, refer_instances(args.refer_root), args.select_layer)

    losses = {}
    for phase, steps in (("phrase", args.phrase_steps), ("chat", args.chat_steps)):
        if steps:
            losses[phase] = finetune_on_tokens(
                model, datasets[phase], steps, args.batch_size, args.lr, args.seed
            )
    metrics = {}
    if benchmarks:
        metrics, _ = evaluate_mllm_grounding(model, processor, benchmarks, batch_size=16, max_new_tokens=24)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_language_model(model, processor.tokenizer, out)
    summary = {
        "args": asdict(args),
        "data": {phase: dataset.stats.as_dict() for phase, dataset in datasets.items()},
        "loss_last_100": {phase: sum(v[-100:]) / len(v[-100:]) for phase, v in losses.items()},
        "losses": losses,
        "grounding": metrics,
        "not_evaluated": not_loaded,
    }
    write_bytes_atomic(out / RESULT_FILE, json.dumps(summary, indent=1).encode())
    write_loss_log(
        out, [v for phase in losses.values() for v in phase], "LLM on oracle tokens: phrases, then chat"
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(OracleLLMArguments).parse_args_into_dataclasses(args=argv)
    summary = train_oracle_llm(args)
    for name, scores in summary["grounding"].items():
        print(f"{name}: Acc@0.5 on oracle tokens {100 * scores['any']['acc@0.5']:.1f}")


if __name__ == "__main__":
    main()
