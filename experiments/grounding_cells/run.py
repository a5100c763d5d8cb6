"""The grounding similarity bias on coarser cells: training cost against grounding, on the val splits.

Encoding every patch cell as a box is most of what a CLOC step costs beyond CLIP's
(docs/pretraining.md). ``PrompterConfig.grounding_cell_size`` encodes cells of s x s patches instead
(s^2 times fewer). This driver pretrains one CLOC tower per cell size on the same world, steps and seed,
times the runs and scores each on the val splits (grounding head, region recognition, retrieval).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from cloc_mllm.pipeline import stages
from cloc_mllm.pipeline.config import config_for_profile

GROUNDING_KEYS = ("acc@0.5", "mean_iou")


def evaluate(model: Path, world: Path, out_dir: Path, benchmarks: str) -> None:
    """The tower's val-split scores: grounding head, region recognition, retrieval (no probes)."""
    from cloc_mllm.eval.runner import EvalArguments, run_evaluation

    run_evaluation(EvalArguments(
        model=str(model), data_root=str(world), out=str(out_dir), suite="all", benchmarks=benchmarks,
        coco_split="val", probe_split="", tokenizer=str(world / "tokenizer"), templates="plain", gallery_size=0,
    ))  # fmt: skip


def summarise(results: dict, seconds: float | None) -> dict:
    grounding = {split: {k: m["any"][k] for k in GROUNDING_KEYS} for split, m in results["grounding"].items()}
    refcoco = [g["acc@0.5"] for split, g in grounding.items() if split.startswith("refcoco")]
    return {
        "pretrain_s": seconds,
        "grounding": grounding,
        "refcoco_mean_acc@0.5": sum(refcoco) / len(refcoco),
        "region_recognition_acc": results["encoder"]["region_recognition"]["acc"],
        "retrieval": {k: results["encoder"]["image_text_retrieval"][k] for k in ("i2t_R@1", "t2i_R@1")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="a main-job run's world/ (same profile)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="reproduce")
    parser.add_argument("--pretrain_steps", type=int, default=2000)
    parser.add_argument("--cell_sizes", default="1,2")
    parser.add_argument("--benchmarks", default="refcoco_val,refcoco+_val,refcocog_val,flickr30k_val")
    args = parser.parse_args(argv)

    world, out = Path(args.world), Path(args.out)
    shards = str(world / "shards" / "train")
    config = config_for_profile(
        args.profile, out_dir=str(out), pretrain_steps=args.pretrain_steps, benchmarks=args.benchmarks,
    )  # fmt: skip
    summary = {"profile": args.profile, "pretrain_steps": args.pretrain_steps, "benchmarks": args.benchmarks}
    for cell_size in (int(s) for s in args.cell_sizes.split(",")):
        run_dir = out / f"cells_{cell_size}"
        pretrain_dir, eval_dir = run_dir / "pretrain", run_dir / "eval"
        seconds = stages.run_stage(pretrain_dir, f"pretrain cell size {cell_size}", partial(
            stages.pretrain, config, "cloc", shards, world / "tokenizer", pretrain_dir,
            model_overrides={"prompter_config": {"grounding_cell_size": cell_size}},
        ))  # fmt: skip
        stages.run_stage(eval_dir, f"eval cell size {cell_size}", lambda p=pretrain_dir, e=eval_dir: evaluate(
            stages.final_checkpoint(p), world, e, args.benchmarks))  # fmt: skip
        summary[f"cell_size_{cell_size}"] = summarise(stages.read_results(eval_dir), seconds)
        print(json.dumps(summary[f"cell_size_{cell_size}"], indent=1), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
