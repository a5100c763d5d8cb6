"""The main job's LLaVA stage 2 as it is launched, by launch variant, on a main-job run's files.

``bench.llava_budget`` times one step inside one process; this times what the main job really runs
(``pipeline.stages.finetune``: the finetuning command, its data loading, DeepSpeed or not) so that the
profiles' launch settings are chosen by measurement: processes (DeepSpeed ZeRO-2 on two CPU ranks of
one thread each, or one process of two threads), precision (fp32, or bf16: autocast over fp32 weights
in one process, DeepSpeed's bf16 engine with fp32 master copies), and frozen token embeddings. Every
variant trains the same steps from the same stage-1 projector and seed; reported: the Trainer's
tokens/s (image tokens included), its ratio to the first variant, and the loss at the last steps
(logged every 10 steps; a variant that is fast but learns less shows it there). Variants run one after the other, not
interleaved: run it on an idle machine.

    python -m cloc_mllm.pipeline --profile quick --out_dir RUN       # world, towers, stage-1 projectors
    python -m bench.finetune_launch --run RUN                         # ~8 min on 2 cores
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import bench_parser, device_description, save_results, setup
from cloc_mllm.mllm.training import SUMMARY_FILE
from cloc_mllm.pipeline import stages
from cloc_mllm.pipeline.config import config_for_profile
from cloc_mllm.training.distributed import native_bf16

NAME = "finetune_launch"
# name -> PipelineConfig fields (2ranks = DeepSpeed ZeRO-2 on two ranks); the first is the ratios' baseline
VARIANTS = {
    "2ranks-fp32": dict(deepspeed="zero2", num_ranks=2, finetune_precision="fp32"),
    "2ranks-fp32-frozen_embeddings": dict(deepspeed="zero2", num_ranks=2, finetune_precision="fp32", freeze_embeddings=True),
    "2ranks-bf16": dict(deepspeed="zero2", num_ranks=2, finetune_precision="bf16"),
    "1process-fp32": dict(deepspeed="", finetune_precision="fp32"),
    "1process-fp32-frozen_embeddings": dict(deepspeed="", finetune_precision="fp32", freeze_embeddings=True),
    "1process-bf16": dict(deepspeed="", finetune_precision="bf16"),
}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--run", required=True, help="a main-job run directory (world, pretrain, finetune/align_*)")
    parser.add_argument("--tower", default="cloc", choices=stages.ENCODERS)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant (the loss is logged every 10)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    device = setup(args)
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    steps = 2 if args.smoke else args.steps
    run = Path(args.run)
    base = config_for_profile("quick", out_dir=str(run), finetune_steps=steps, seed=args.seed)
    tower = stages.exported_tower(run / "pretrain" / args.tower)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            out = Path(scratch) / "llava"
            stages.finetune(
                replace(base, **VARIANTS[name]), run / "finetune" / "llm", tower, run / "finetune" / "train.json",
                run / "world" / "refer", out, projector_only=False, adapter=run / "finetune" / f"align_{args.tower}",
            )
            summary = json.loads((out / SUMMARY_FILE).read_text())
            losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
            rows.append({
                "variant": name, "steps": steps, "batch": base.finetune_batch_size,
                "train_runtime_s": round(summary["train"]["train_runtime"], 1),
                "tokens_per_s": round(summary["train"]["train_tokens_per_second"]),
                "last_logged_loss": round(losses[-1], 3) if losses else None,
            })  # fmt: skip
            shutil.rmtree(out)
    first = rows[0]
    for row in rows:
        row["speed_vs_first"] = round(row["tokens_per_s"] / first["tokens_per_s"], 2)
    summary = [
        f"{device_description(device)}; stage 2 of LLaVA-{args.tower.upper()} as the main job launches it, "
        f"{steps} steps of {base.finetune_batch_size} records; bf16 native: {native_bf16(device)}"
    ] + [f"{row['variant']}: {row['speed_vs_first']:.2f}x the tokens/s of {first['variant']}, "
         f"loss at the last logged step {row['last_logged_loss']}" for row in rows]  # fmt: skip
    print("\n".join(summary))
    save_results(NAME, device, args, {}, rows, summary)


if __name__ == "__main__":
    main()
