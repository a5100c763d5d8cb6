"""LLaVA grounding against stage-2 steps, both towers, on the val splits.

The main job's LLaVAs answer stock boxes after their stage-2 budget; this driver asks whether that is
a matter of steps. From a main-job run (world, towers, stage-1 projectors), it trains stage 2 per tower
for ``--finetune_steps`` with a checkpoint every ``--every`` steps and scores every checkpoint on val
splits, so the curve is one run per tower (a checkpoint at step k sits inside one cosine schedule, not
at the end of a k-step one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cloc_mllm.pipeline import stages  # noqa: E402
from cloc_mllm.pipeline.config import config_for_profile  # noqa: E402

TOWERS = ("clip", "cloc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a main-job run directory (world, pretrain, finetune/align_*)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--finetune_steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--deepspeed", default="", help="'' = one process (the faster path on 2 CPU cores)")
    parser.add_argument("--benchmarks", default="refcoco_val,refcoco+_val,refcocog_val")
    parser.add_argument("--eval_limit", type=int, default=100)
    args = parser.parse_args()

    run, out = Path(args.run), Path(args.out)
    config = config_for_profile(
        args.profile, out_dir=str(run), finetune_steps=args.finetune_steps, deepspeed=args.deepspeed,
        benchmarks=args.benchmarks, eval_limit=args.eval_limit,
    )  # fmt: skip
    world, llm, data = run / "world", run / "finetune" / "llm", run / "finetune" / "train.json"
    curves: dict[str, dict[int, dict]] = {}
    for tower in TOWERS:
        train_dir = out / f"llava_{tower}"
        stages.run_stage(train_dir, f"stage 2 {tower}", lambda tower=tower, train_dir=train_dir: stages.finetune(
            config, llm, stages.exported_tower(run / "pretrain" / tower), data, world / "refer", train_dir,
            projector_only=False, adapter=run / "finetune" / f"align_{tower}", save_steps=args.every))
        curves[tower] = {}
        for checkpoint in sorted(train_dir.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1])):
            step = int(checkpoint.name.split("-")[1])
            eval_dir = out / "eval" / f"{tower}_{step}"
            stages.run_stage(eval_dir, f"eval {tower} {step}", lambda c=checkpoint, e=eval_dir: stages.evaluate(
                config, c, world, e, "grounding"))
            results = stages.read_results(eval_dir)["grounding"]
            curves[tower][step] = {
                split: {"acc@0.5": m["any"]["acc@0.5"], "mean_iou": m["any"]["mean_iou"], "centre": m["localisation"]}
                for split, m in results.items()
            }
        log = json.loads((train_dir / "train_summary.json").read_text())["log_history"]
        curves[tower]["loss"] = [(h["step"], h["loss"]) for h in log if "loss" in h]
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "curves": curves}, indent=1))
    plot(curves, out / "curve.png")
    print(json.dumps(curves, indent=1))


def plot(curves: dict, path: Path) -> None:
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for tower, curve in curves.items():
        steps = sorted(k for k in curve if k != "loss")
        mean = [sum(m["acc@0.5"] for m in curve[s].values()) / len(curve[s]) for s in steps]
        acc_ax.plot(steps, [100 * v for v in mean], marker="o", label=f"LLaVA-{tower.upper()}")
        loss_ax.plot(*zip(*curve["loss"], strict=True), label=f"LLaVA-{tower.upper()}")
    acc_ax.set(xlabel="stage-2 step", ylabel="Acc@0.5 (%), mean of val splits", title="grounding")
    loss_ax.set(xlabel="stage-2 step", ylabel="answer-token loss", title="stage-2 loss")
    for ax in (acc_ax, loss_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
