"""One LLaVA-1.5 run (stage 1 + stage 2) on a main-job tower with a chosen LLM, scored on val splits.

The main job fixes the LLM's depth per profile; this driver answers "what does depth buy per step and
per second?" on the same towers and instruction data, reading only validation splits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloc_mllm.pipeline import stages
from cloc_mllm.pipeline.config import config_for_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a main-job run directory (world + pretrain)")
    parser.add_argument("--llm", required=True, help="plain LLM directory (cloc_mllm.mllm.llm_source)")
    parser.add_argument("--data", required=True, help="LLaVA json of the instruction turns")
    parser.add_argument("--tower", default="cloc", choices=stages.ENCODERS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--align_steps", type=int, default=100)
    parser.add_argument("--align_lr", type=float, default=2e-3)
    parser.add_argument("--finetune_steps", type=int, default=100)
    parser.add_argument("--finetune_lr", type=float, default=5e-4)
    parser.add_argument("--lora_r", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--benchmarks", default="refcoco_val,refcoco+_val,refcocog_val")
    parser.add_argument("--eval_limit", type=int, default=100)
    args = parser.parse_args()

    run, out = Path(args.run), Path(args.out)
    config = config_for_profile(
        "quick", out_dir=str(run), align_steps=args.align_steps, align_lr=args.align_lr,
        finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, lora_r=args.lora_r,
        finetune_batch_size=args.batch_size, benchmarks=args.benchmarks, eval_limit=args.eval_limit,
    )  # fmt: skip
    tower, world = stages.exported_tower(run / "pretrain" / args.tower), run / "world"
    timings = {  # each step is skipped when its folder is marked done (a re-run resumes)
        "align_s": stages.run_stage(out / "align", "align", lambda: stages.finetune(
            config, Path(args.llm), tower, Path(args.data), world / "refer", out / "align", projector_only=True)),
        "finetune_s": stages.run_stage(out / "llava", "finetune", lambda: stages.finetune(
            config, Path(args.llm), tower, Path(args.data), world / "refer", out / "llava",
            projector_only=False, adapter=out / "align")),
        "eval_s": stages.run_stage(out / "eval", "eval", lambda: stages.evaluate(
            config, out / "llava", world, out / "eval", "grounding")),
    }  # fmt: skip
    results = stages.read_results(out / "eval")
    summary = {
        "args": vars(args), "timings_s": timings,
        "acc@0.5": {s: m["any"]["acc@0.5"] for s, m in results["grounding"].items()},
        "mean_iou": {s: m["any"]["mean_iou"] for s, m in results["grounding"].items()},
        "centre_error": {s: m["localisation"] for s, m in results["grounding"].items()},
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
