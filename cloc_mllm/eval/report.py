"""What an evaluation leaves behind: ``results.json``, ``results.md`` and PNG plots.

The json is the record (metrics, fingerprints, counts, timing, config); the markdown and plots are
for a person: per-split bars, and a gallery of predicted vs ground-truth boxes, worst cases first, which
is where a box-frame bug or a parser failure shows at a glance.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cloc_mllm.atomic_io import write_bytes_atomic  # noqa: E402
from cloc_mllm.eval.benchmarks import GroundingItem  # noqa: E402
from cloc_mllm.eval.inputs import open_image  # noqa: E402
from cloc_mllm.eval.metrics import protocol_ious  # noqa: E402
from cloc_mllm.visualize import draw_boxes  # noqa: E402

GT_COLOUR, PRED_COLOUR = (40, 200, 60), (230, 30, 40)


def _clean(value):
    """NaN/inf -> None so the file is strict json."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, obj: dict) -> None:
    write_bytes_atomic(Path(path), json.dumps(_clean(obj), indent=2).encode("utf-8"))


def save_figure(fig, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())


# ---- markdown ----------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if abs(value) <= 1.0 else f"{value:.3g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], cell: Callable[[object], str] = _fmt) -> str:
    """A markdown table, each cell written by ``cell`` (default: fractions in %, None as a dash)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def grounding_table(grounding: dict[str, dict]) -> str:
    """Per benchmark: Acc@0.5 under each protocol, Recall@k (when predictions are ranked), where the
    answers land (centre error; on some annotated object, and the referred one among those), counts."""
    header = ["benchmark", "n", "Acc@0.5", "Acc@0.5 first-box", "Acc@0.5 merged-box", "R@1", "R@5", "R@10"]
    header += ["mean IoU", "centre error", "blind centre error", "on an object", "referred of those"]
    header += ["unparseable", "empty", "missing image"]
    rows = []
    for name, m in grounding.items():
        any_, counts, where, objects = m["any"], m["counts"], m.get("localisation", {}), m.get("objects", {})
        rows.append(
            [
                name,
                any_["n"],
                any_["acc@0.5"],
                m.get("first", {}).get("acc@0.5"),
                m.get("merged", {}).get("acc@0.5"),
                any_.get("recall@1"),
                any_.get("recall@5"),
                any_.get("recall@10"),
                any_["mean_iou"],
                where.get("centre_error"),
                where.get("centre_error_blind"),
                objects.get("hit"),
                objects.get("referred_of_hits"),
                counts.get("status_unparseable", 0),
                counts.get("status_empty_answer", 0),
                counts.get("status_missing_image", 0),
            ]
        )
    return markdown_table(header, rows)


def referring_table(referring: dict[str, dict]) -> str:
    rows = [[n, m["n"], m["exact"], m["noun"], m["token_f1"], m.get("cider")] for n, m in referring.items()]
    return markdown_table(["benchmark", "n", "exact", "noun", "token F1", "CIDEr"], rows)


def digit_gain_table(gain: dict) -> str:
    """Per box digit: answer loss with the item's own image, with another item's, and the gain (nats)."""
    rows = [
        [name, row["own"], row["other"], f"{row['other'] - row['own']:+.3f}", row["tokens"]]
        for name, row in gain["digits"].items()
    ]
    return markdown_table(
        ["box digit", "loss, own image", "loss, another image", "gain (nats)", "tokens"], rows,
        cell=lambda v: f"{v:.3f}" if isinstance(v, float) else str(v),
    )  # fmt: skip


def encoder_tables(encoder: dict) -> str:
    parts = []
    if "region_recognition" in encoder:
        m = encoder["region_recognition"]
        parts.append("### Region recognition (zero-shot, ground-truth boxes)\n")
        parts.append(
            markdown_table(["n boxes", "mAcc", "accuracy", "head"], [[m["n"], m["mAcc"], m["acc"], m.get("head")]])
        )
    if "patch_probe" in encoder:
        m = encoder["patch_probe"]
        parts.append("\n### Patch tokens, linear probes (what an MLLM's projector can read)\n")
        rows = [
            [layer, v["object_class_acc"], v["all_class_acc"], v["position_acc"]] for layer, v in m["layers"].items()
        ]
        parts.append(markdown_table(["layer", "class on object patches", "class on all patches", "grid position"], rows))
        parts.append(
            f"\nAccuracies in %; chance is {100 / m['classes']:.1f} (class) and {100 / m['grid_cells']:.1f} "
            f"(position). {100 * m['object_patch_fraction']:.0f}% of the {m['test_patches']} test patches "
            "lie on an object."
        )
    if "region_text_retrieval" in encoder:
        parts.append("\n### Region-text retrieval\n")
        keys = ["t2r_R@1", "t2r_R@5", "t2r_R@10", "r2t_R@1", "r2t_R@5", "r2t_R@10", "t2r_in_image_R@1"]
        rows = [
            [b, m.get("n_regions"), *(m.get(k) for k in keys)]
            for b, m in encoder["region_text_retrieval"].items()
        ]
        parts.append(markdown_table(["benchmark", "regions", *keys], rows))
    if "image_text_retrieval" in encoder:
        m = encoder["image_text_retrieval"]
        keys = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"]
        parts.append("\n### Image-text retrieval\n")
        parts.append(markdown_table(["images", *keys], [[m.get("n_images"), *(m.get(k) for k in keys)]]))
    if "zero_shot_classification" in encoder:
        m = encoder["zero_shot_classification"]
        parts.append("\n### Zero-shot classification\n")
        parts.append(
            markdown_table(
                ["n", "top-1", "top-5", "mean per class"],
                [[m["n"], m.get("top1"), m.get("top5"), m.get("mean_per_class")]],
            )
        )
    return "\n".join(parts)


def results_markdown(results: dict, plots: Sequence[str] = ()) -> str:
    model = results["model"]
    lines = [
        f"# Evaluation of `{model['path']}`",
        "",
        f"- model: {model['kind']}, fingerprint `{model['fingerprint'][:16]}`, region head `{model.get('region_head')}`",
        f"- data root: `{results['data']['root']}`",
        f"- finished {results['finished']} in {results['timing']['total_seconds']:.1f} s "
        f"on {results['environment']['world_size']} process(es)",
        "",
        "Numbers are percentages. Boxes are scored on the original image; an unparseable or empty answer is a miss;",
        "items whose image is missing are left out and counted.",
    ]
    if results.get("grounding"):
        lines += [
            "",
            f"## Grounding ({results.get('grounding_source', '')})",
            "",
            grounding_table(results["grounding"]),
        ]
    if results.get("image_digit_gain"):
        gain = results["image_digit_gain"]
        lines += [
            "", "## What the image gives each box digit", "",
            f"The true boxes of {gain['records']} grounding items, scored with each item's own image and with "
            "another item's (nats; cloc_mllm.eval.digit_gain). A model that ignores the image gains 0; on the "
            "hundreds digits of x1 and y1 (a tenth of the image) the gain is the localisation itself.", "",
            digit_gain_table(gain),
        ]  # fmt: skip
    if results.get("referring"):
        lines += ["", "## Referring (box -> phrase)", "", referring_table(results["referring"])]
    if results.get("encoder"):
        lines += ["", "## Encoder", "", encoder_tables(results["encoder"])]
    if results.get("unavailable"):
        lines += ["", "## Not evaluated", ""] + [f"- {k}: {v}" for k, v in results["unavailable"].items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ---- plots -------------------------------------------------------------------------------------


def plot_bars(values: dict[str, dict[str, float]], title: str, path: str | Path) -> None:
    """Grouped bars: ``values[group][series]`` in [0, 1], drawn as percentages with the number on
    each bar; a missing or None value draws no bar. More than 10 groups are drawn horizontally so their
    names stay readable."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    horizontal = len(groups) > 10
    step = 0.8 / max(len(series), 1)
    long_side = max(6.0, 0.35 * len(groups) * max(1, len(series)) ** 0.5 + 1.5)
    fig, ax = plt.subplots(figsize=(9, long_side) if horizontal else (long_side, 4.2))
    for j, name in enumerate(series):
        present = [i for i, g in enumerate(groups) if values[g].get(name) is not None]  # no bar for "–"
        pos = [i + (j - (len(series) - 1) / 2) * step for i in present]
        pct = [100 * values[groups[i]][name] for i in present]
        bars = ax.barh(pos, pct, step, label=name) if horizontal else ax.bar(pos, pct, step, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    if horizontal:
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 105)
        ax.set_xlabel("%")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def grounding_bars(grounding: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Acc@0.5 per benchmark and protocol, the data of the per-split bar chart."""
    labels = {"any": "Acc@0.5 (any box)", "first": "first box", "merged": "merged box"}
    return {b: {labels[p]: m[p]["acc@0.5"] for p in labels if p in m} for b, m in grounding.items()}


def encoder_bars(encoder: dict) -> dict[str, dict[str, float]]:
    """One bar per headline encoder number (single series), the data of the encoder chart."""
    values: dict[str, dict[str, float]] = {}
    if "region_recognition" in encoder:
        values["region recognition mAcc"] = {"score": encoder["region_recognition"]["mAcc"]}
    for layer, m in encoder.get("patch_probe", {}).get("layers", {}).items():
        values[f"patch class (layer {layer})"] = {"score": m["object_class_acc"]}
        values[f"patch position (layer {layer})"] = {"score": m["position_acc"]}
    for bench, m in encoder.get("region_text_retrieval", {}).items():
        if "t2r_R@1" in m:
            values[f"{bench} text->region R@1"] = {"score": m["t2r_R@1"]}
            values[f"{bench} in-image R@1"] = {"score": m["t2r_in_image_R@1"]}
    if "i2t_R@1" in encoder.get("image_text_retrieval", {}):
        values["image->text R@1"] = {"score": encoder["image_text_retrieval"]["i2t_R@1"]}
        values["text->image R@1"] = {"score": encoder["image_text_retrieval"]["t2i_R@1"]}
    if "top1" in encoder.get("zero_shot_classification", {}):
        values["zero-shot top-1"] = {"score": encoder["zero_shot_classification"]["top1"]}
    return values


def worst_first(
    items: Sequence[GroundingItem], rows: dict[str, dict], n: int
) -> list[tuple[GroundingItem, float]]:
    """Items with a readable image, ordered by the IoU of their first predicted box, lowest first."""
    scored = []
    for item in items:
        row = rows[item.key]
        if row.get("status") == "missing_image":
            continue
        w, h = row["image_size"]
        boxes = [(b[0] * w, b[1] * h, b[2] * w, b[3] * h) for b in row.get("boxes", [])[:1]]
        ious = protocol_ious(boxes, list(item.boxes), "any")
        scored.append((item, ious[0] if ious else 0.0))
    scored.sort(key=lambda pair: pair[1])
    return scored[:n]


def plot_gallery(
    items: Sequence[GroundingItem], rows: dict[str, dict], path: str | Path, title: str, n: int = 12
) -> bool:
    """Ground truth (green) vs prediction (red) with the expression and IoU, worst first.

    Returns False (and writes nothing) when no item has a readable image.
    """
    chosen = worst_first(items, rows, n)
    if not chosen:
        return False
    cols = min(4, len(chosen))
    fig, axes = plt.subplots(
        math.ceil(len(chosen) / cols),
        cols,
        figsize=(3.3 * cols, 3.6 * math.ceil(len(chosen) / cols)),
        squeeze=False,
        layout="constrained",  # keeps the suptitle clear of the panel titles
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (item, iou) in zip(axes.flat, chosen, strict=False):
        row = rows[item.key]
        w, h = row["image_size"]
        image = open_image(item.image_path, (w, h))  # the frame the boxes were scored in
        if image is None:
            continue
        sx, sy = image.width / w, image.height / h  # annotation size -> this file's pixels
        gts = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in item.boxes]
        preds = [
            (b[0] * image.width, b[1] * image.height, b[2] * image.width, b[3] * image.height)
            for b in row.get("boxes", [])[:1]
        ]
        drawn = draw_boxes(
            image,
            gts + preds,
            colours=[GT_COLOUR] * len(gts) + [PRED_COLOUR] * len(preds),
            width=max(2, image.width // 100),
        )
        ax.imshow(drawn)
        answer = row.get("answer")
        if answer is not None:  # a model's raw answer may hold control or undecodable characters
            answer = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in answer)
        caption = f"IoU {iou:.2f}: {item.text}" + (f"\nanswer: {answer}" if answer is not None else "")
        ax.set_title("\n".join(textwrap.fill(line, 40) for line in caption.split("\n"))[:200], fontsize=8)
    fig.suptitle(f"{title}: ground truth green, prediction red (worst first)", fontsize=10)
    save_figure(fig, path)
    return True
