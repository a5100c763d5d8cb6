"""Does the LLaVA ground when the question comes before the image?

LLaVA-1.5's data puts ``<image>`` before the question. In a causal LLM the image tokens then cannot
see the question: the answer's first digit must find "the red circle" among 64 image tokens by
matching its own query against every token's content (a content-addressed lookup), which a shallow
LLM learns slowly. With the question first, each image token can read the question and mark itself
("I am the red circle") in its own position, and the answer only has to attend to the marked token:
the same lookup becomes local. LLaVA-1.5's own instruction mix places ``<image>`` on either side of the
question, so both orders are the recipe.

From a main-job run (world, towers, the plain LLM), per tower and order: single-turn grounding
records (so every question can precede its image), stage 1 and stage 2 as the main job runs them,
then grounding on the val splits with the matching prompt.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import CLIPVisionConfig  # noqa: E402

from cloc_mllm.data.refer import load_refer  # noqa: E402
from cloc_mllm.eval.benchmarks import load_grounding_benchmarks  # noqa: E402
from cloc_mllm.eval.digit_gain import digit_losses  # noqa: E402
from cloc_mllm.eval.mllm_grounding import evaluate_mllm_grounding  # noqa: E402
from cloc_mllm.mllm.inference import load_mllm  # noqa: E402
from cloc_mllm.mllm.instruct_builders import (  # noqa: E402
    GROUNDING_QUESTIONS,
    facts_to_conversations,
    refer_facts,
    write_records,
)
from cloc_mllm.mllm.pointing import tower_grid  # noqa: E402
from cloc_mllm.mllm.templates import IMAGE_TOKEN  # noqa: E402
from cloc_mllm.pipeline import stages  # noqa: E402
from cloc_mllm.pipeline.config import config_for_profile  # noqa: E402

ORDERS = ("question_first", "image_first")


def move_image_after_question(records: list[dict]) -> list[dict]:
    """``<image>\\nQ`` -> ``Q\\n<image>`` in each record's first turn."""
    for record in records:
        first = record["conversations"][0]
        if not first["value"].startswith(f"{IMAGE_TOKEN}\n"):
            raise ValueError(f"record {record['id']}: the first turn does not start with {IMAGE_TOKEN}")
        first["value"] = first["value"][len(IMAGE_TOKEN) + 1 :] + f"\n{IMAGE_TOKEN}"
    return records


def prefix_answers(records: list[dict], prefix: str) -> list[dict]:
    """``[x1, ...]`` -> ``{prefix}[x1, ...]`` in each record's answers: the LLM gets answer positions to
    work at before it must write x1's first digit (y1's digits, which come later, are read from the
    image; x1's, written first, are not)."""
    for record in records:
        for turn in record["conversations"][1::2]:
            turn["value"] = prefix + turn["value"]
    return records


def grounding_data(
    world: Path, order: str, seed: int, out_path: Path, split: str = "train", answer_prefix: str = "",
    point_grid: int = 0, kinds: tuple[str, ...] = ("grounding",), turns_per_record: int = 1,
) -> int:
    """Records of RefCOCO/+/g ``split`` in ``order`` (answers pointing at a cell of ``point_grid`` first
    when given); single-turn grounding by default, so every question can precede its image; returns
    their number."""
    records = []
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        refs = load_refer(world / "refer", dataset=dataset, split_by=split_by, split=split)
        records += facts_to_conversations(
            refer_facts(refs),
            dataset,
            kinds=list(kinds),
            turns_per_record=turns_per_record,
            image_root=world / "refer",
            seed=seed,
            point_grid=point_grid,
        )
    if order == "question_first":
        records = move_image_after_question(records)
    write_records(prefix_answers(records, answer_prefix), out_path)
    return len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", required=True, help="a main-job run directory (world, pretrain, finetune/llm)"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--towers", default="cloc,clip")
    parser.add_argument("--orders", default=",".join(ORDERS))
    parser.add_argument("--align_steps", type=int, default=150)
    parser.add_argument("--finetune_steps", type=int, default=300)
    parser.add_argument("--benchmarks", default="refcoco_val,refcoco+_val,refcocog_val")
    parser.add_argument("--eval_limit", type=int, default=100)
    parser.add_argument("--align_lr", type=float, default=None, help="default: the profile's")
    parser.add_argument("--finetune_lr", type=float, default=None, help="default: the profile's")
    parser.add_argument("--tag", default="", help="names this variant in the results (towers/order/tag)")
    parser.add_argument("--every", type=int, default=0, help="also score a stage-2 checkpoint every N steps")
    parser.add_argument(
        "--vision_select_layer", type=int, default=-2, help="the tower layer the projector reads"
    )
    parser.add_argument(
        "--patch_position", action="store_true", help="projectors add learned row / column embeddings"
    )
    parser.add_argument(
        "--patch_position_scale", default="unit", help="unit | token (embeddings scaled to each token's norm)"
    )
    parser.add_argument(
        "--patch_position_init",
        default="random",
        help="random | digits (the LLM's embeddings of each patch's hundreds digit)",
    )
    parser.add_argument(
        "--patch_order", default="row", help="row | row_column (the patch tokens again, column-major)"
    )
    parser.add_argument(
        "--answer_prefix",
        default="",
        help="text every answer starts with before its box (e.g. 'The object is at ')",
    )
    parser.add_argument(
        "--point_cell",
        action="store_true",
        help="answers start with the tower cell holding the box centre, <cell_k> (cloc_mllm.mllm.pointing)",
    )
    parser.add_argument(
        "--point_to_patches",
        action="store_true",
        help="with --point_cell: the cells also match and carry the image's patch tokens (PatchPointer)",
    )
    parser.add_argument(
        "--kinds", default="grounding", help="turn kinds of the records (grounding,referring: the main job's)"
    )
    parser.add_argument(
        "--turns_per_record", type=int, default=1, help="turns per record (3: the main job's; needs image_first)"
    )
    args = parser.parse_args()

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = config_for_profile(
        args.profile, out_dir=str(run), align_steps=args.align_steps, finetune_steps=args.finetune_steps,
        vision_select_layer=args.vision_select_layer, patch_position=args.patch_position,
        patch_position_scale=args.patch_position_scale, patch_position_init=args.patch_position_init,
        patch_order=args.patch_order, point_cells=args.point_cell, point_to_patches=args.point_to_patches,
        **{name: getattr(args, name) for name in ("align_lr", "finetune_lr") if getattr(args, name) is not None},
    )  # fmt: skip
    world, llm = run / "world", run / "finetune" / "llm"
    first_tower = stages.exported_tower(run / "pretrain" / args.towers.split(",")[0])
    grid = tower_grid(CLIPVisionConfig.from_pretrained(first_tower)) if args.point_cell else 0
    kinds = tuple(args.kinds.split(","))
    if args.turns_per_record > 1 and "question_first" in args.orders:
        raise SystemExit("--turns_per_record > 1 puts later questions after the image: use --orders image_first")
    names = [n for n in args.benchmarks.split(",") if n]
    benchmarks, unavailable = load_grounding_benchmarks(world / "refer", None, names, limit=args.eval_limit)
    if unavailable:
        raise SystemExit(f"benchmarks not found: {unavailable}")
    summary_path = out / "summary.json"
    summary = read_summary(summary_path) if summary_path.exists() else {"args": vars(args), "results": {}}
    for order in args.orders.split(","):
        name = order + ("_prefixed" if args.answer_prefix else "") + ("_cells" if grid else "")
        if kinds != ("grounding",) or args.turns_per_record != 1:
            name += f"_{'_'.join(kinds)}_{args.turns_per_record}turns"
        data, val_data = out / f"train_{name}.json", out / f"val_{name}.json"
        records = functools.partial(
            grounding_data, world, order, config.seed, answer_prefix=args.answer_prefix, point_grid=grid, kinds=kinds,
            turns_per_record=args.turns_per_record,
        )  # fmt: skip
        if not val_data.exists():
            records(val_data, split="val")
        if not data.exists():
            print(order, records(data), "records")
        for tower in args.towers.split(","):
            key = f"{tower}/{order}" + (f"/{args.tag}" if args.tag else "")
            if key in summary["results"]:
                continue
            tower_dir = stages.exported_tower(run / "pretrain" / tower)
            align, llava = (out / f"{stage}_{key.replace('/', '_')}" for stage in ("align", "llava"))
            train = functools.partial(stages.finetune, config, llm, tower_dir, data, world / "refer")
            if args.align_steps:
                stages.run_stage(
                    align, f"stage 1 {key}", functools.partial(train, align, projector_only=True)
                )
            stages.run_stage(
                llava,
                f"stage 2 {key}",
                functools.partial(
                    train,
                    llava,
                    projector_only=False,
                    adapter=align if args.align_steps else None,
                    save_steps=args.every,
                ),
            )
            template = GROUNDING_QUESTIONS[0] + (f"\n{IMAGE_TOKEN}" if order == "question_first" else "")
            checkpoints = {int(c.name.split("-")[1]): c for c in llava.glob("checkpoint-*")}
            checkpoints[args.finetune_steps] = llava
            log = json.loads((llava / "train_summary.json").read_text())["log_history"]
            summary["results"][key] = {
                "val": {
                    step: score(*load_mllm(path), benchmarks, template, val_data, world / "refer")
                    for step, path in sorted(checkpoints.items())
                },
                "loss": [(h["step"], h["loss"]) for h in log if "loss" in h],
                "args": vars(args),
            }
            summary_path.write_text(json.dumps(summary, indent=1))
            print(key, json.dumps(summary["results"][key]["val"][args.finetune_steps]["metrics"]))
    plot(summary["results"], out / "curve.png")
    plot_digit_gain(summary["results"], out / "digit_gain.png")
    plot_gain_curves(summary["results"], out / "gain_curves.png")
    plot_objects(summary["results"], out / "objects.png")
    plot_pointing(summary["results"], out / "pointing.png")


def read_summary(path: Path) -> dict:
    """summary.json with each variant's step keys back to ints (json wrote them as strings)."""
    summary = json.loads(path.read_text())
    for result in summary["results"].values():
        result["val"] = {int(step): scores for step, scores in result["val"].items()}
    return summary


def score(model, processor, benchmarks, template: str, val_data: Path, image_folder: Path) -> dict:
    """Val grounding of one LLaVA (metrics per split, its first answers) and its per-digit image gain;
    for answers that point first, the evaluation scores the pointers too."""
    metrics, rows = evaluate_mllm_grounding(model, processor, benchmarks, prompt=template)
    return {
        "metrics": {
            split: {
                "acc@0.5": m["any"]["acc@0.5"],
                "mean_iou": m["any"]["mean_iou"],
                "centre": m["localisation"],
                "objects": m.get("objects"),  # the first answer on some object, and on the referred one
                "reference": m["reference"],
                **({"pointing": m["pointing"]} if "pointing" in m else {}),
            }
            for split, m in metrics.items()
        },
        "answers": {
            split: [r["answer"] for r in list(split_rows.values())[:8]] for split, split_rows in rows.items()
        },
        "digit_loss": digit_losses(model, processor, val_data, image_folder, limit=256),
    }


def plot(results: dict, path: Path) -> None:
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, result in results.items():
        steps = sorted(result["val"])
        val = [result["val"][s]["metrics"] for s in steps]
        acc_ax.plot(
            steps, [100 * sum(m["acc@0.5"] for m in v.values()) / len(v) for v in val], marker="o", label=key
        )
        loss_ax.plot(*zip(*result["loss"], strict=True), label=key)
    acc_ax.set(xlabel="stage-2 step", ylabel="Acc@0.5 (%), mean of val splits", title="LLaVA grounding")
    loss_ax.set(xlabel="stage-2 step", ylabel="answer-token loss", title="stage-2 loss")
    for ax in (acc_ax, loss_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def last(result: dict) -> dict:
    """The scores of a variant's last stage-2 step."""
    return result["val"][max(result["val"])]


def plot_digit_gain(results: dict, path: Path) -> None:
    """Grouped bars: nats each box digit gains from the record's own image, per variant."""
    keys = [key for key, result in results.items() if "digit_loss" in last(result)]
    if not keys:
        return
    names = list(last(results[keys[0]])["digit_loss"]["digits"])
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(12, 4))
    for k, key in enumerate(keys):
        digits = last(results[key])["digit_loss"]["digits"]
        gains = [digits[n]["other"] - digits[n]["own"] for n in names]
        ax.bar([i + k * width for i in range(len(names))], gains, width, label=key)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set(
        ylabel="loss with another image - own (nats)",
        title="What each box digit reads from the image (val; a hundreds digit from the prior alone costs ~2 nats)",
    )
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gain_curves(results: dict, path: Path) -> None:
    """Per variant scored at several stage-2 steps: the image gain of x1's and y1's hundreds digits."""
    keys = [key for key, result in results.items() if len(result["val"]) > 1]
    if not keys:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, coordinate in zip(axes, ("x1", "y1"), strict=True):
        for key in keys:
            steps = sorted(results[key]["val"])
            digits = [results[key]["val"][s]["digit_loss"]["digits"][f"{coordinate} hundreds"] for s in steps]
            ax.plot(steps, [d["other"] - d["own"] for d in digits], marker="o", label=key)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(xlabel="stage-2 step", title=f"{coordinate}'s hundreds digit: what the image gives (val)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss with another image - own (nats)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pooled_objects(metrics: dict) -> tuple[float, float | None, float]:
    """Over a step's val splits, pooled by item: first answers on some object, the referred one of those
    (None without a hit) and a random object of the image's Acc@0.5 (the ignore-the-words reference)."""
    scored = [m for m in metrics.values() if m.get("objects")]
    items = sum(m["objects"]["items"] for m in scored)
    hits = sum(m["objects"]["hit"] * m["objects"]["items"] for m in scored)
    referred = sum(
        (m["objects"]["referred_of_hits"] or 0.0) * m["objects"]["hit"] * m["objects"]["items"]
        for m in scored
    )
    random_object = (
        sum(m["reference"]["random_object_acc@0.5"] * m["objects"]["items"] for m in scored) / items
    )
    return hits / items, (referred / hits if hits else None), random_object


def plot_objects(results: dict, path: Path) -> None:
    """Per variant and scored step: how often the first answer lands on an object, and on the referred one."""
    keys = [
        key
        for key, result in results.items()
        if any(m.get("objects") for m in last(result)["metrics"].values())
    ]
    if not keys:
        return
    fig, (hit_ax, referred_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        steps = sorted(results[key]["val"])
        pooled = [pooled_objects(results[key]["val"][s]["metrics"]) for s in steps]
        hit_ax.plot(steps, [100 * p[0] for p in pooled], marker="o", label=key)
        referred_ax.plot(
            steps, [100 * p[1] if p[1] is not None else float("nan") for p in pooled], marker="o", label=key
        )
    referred_ax.axhline(
        100 * pooled[-1][2], color="grey", linestyle="--", label="a random object of the image"
    )
    hit_ax.set(
        xlabel="stage-2 step", ylabel="% of val items", title="first answer on some object (IoU >= 0.5)"
    )
    referred_ax.set(xlabel="stage-2 step", ylabel="% of those hits", title="... and on the referred one")
    save_percent_plot(fig, (hit_ax, referred_ax), path)


def plot_pointing(results: dict, path: Path) -> None:
    """Per pointing variant and scored step: answers naming the referred box's centre cell, pooled by item."""
    keys = [key for key, result in results.items() if any("pointing" in m for m in last(result)["metrics"].values())]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        steps = sorted(results[key]["val"])
        pooled = []
        for step in steps:
            splits = [m["pointing"] for m in results[key]["val"][step]["metrics"].values()]
            pooled.append(100 * sum(p["right_cell"] * p["items"] for p in splits) / sum(p["items"] for p in splits))
        ax.plot(steps, pooled, marker="o", label=key)
    ax.axhline(100 * splits[0]["chance"], color="grey", linestyle="--", label="chance (one cell of the grid)")
    ax.set(xlabel="stage-2 step", ylabel="% of val items", title="first token names the referred box's centre cell")
    save_percent_plot(fig, (ax,), path)


def save_percent_plot(fig, axes, path: Path) -> None:
    """Percent axes (0-100) with legend and grid, then the figure to ``path``."""
    for ax in axes:
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
