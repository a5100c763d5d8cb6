"""Side by side: several ``results.json`` (e.g. CLIP vs CLOC) as one table and one chart.

Each run contributes its headline numbers, flattened to names like ``grounding/refcoco_val/Acc@0.5``;
a number missing from a run shows as a dash, so runs over different suites still line up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cloc_mllm.atomic_io import write_bytes_atomic
from cloc_mllm.eval.report import plot_bars, write_json

_ENCODER_KEYS = {
    "region_recognition": ("mAcc", "acc"),
    "image_text_retrieval": ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"),
    "zero_shot_classification": ("top1", "top5"),
}


def headline_metrics(results: dict) -> dict[str, float]:
    """The numbers worth comparing, flattened: grounding Acc@0.5 (and the Flickr protocols), referring
    noun/exact/CIDEr, region recognition, patch probes, retrieval and zero-shot classification."""
    flat: dict[str, float] = {}
    for bench, m in results.get("grounding", {}).items():
        flat[f"grounding/{bench}/Acc@0.5"] = m["any"]["acc@0.5"]
        if "merged" in m:
            flat[f"grounding/{bench}/Acc@0.5 merged"] = m["merged"]["acc@0.5"]
        if "localisation" in m:
            flat[f"grounding/{bench}/centre error (lower is better)"] = m["localisation"]["centre_error"]
        if m.get("objects", {}).get("hit") is not None:
            flat[f"grounding/{bench}/answer on an object"] = m["objects"]["hit"]
    for bench, m in results.get("referring", {}).items():
        for key in ("noun", "exact", "cider"):
            if m.get(key) is not None:
                flat[f"referring/{bench}/{key}"] = m[key]
    encoder = results.get("encoder", {})
    for task, keys in _ENCODER_KEYS.items():
        for key in keys:
            if key in encoder.get(task, {}):
                flat[f"{task}/{key}"] = encoder[task][key]
    for layer, m in encoder.get("patch_probe", {}).get("layers", {}).items():
        for key, label in (("object_class_acc", "object class"), ("position_acc", "position")):
            if m.get(key) is not None:
                flat[f"patch_probe/layer {layer}/{label}"] = m[key]
    for bench, m in encoder.get("region_text_retrieval", {}).items():
        for key in ("t2r_R@1", "t2r_in_image_R@1"):
            if key in m:
                flat[f"region_text_retrieval/{bench}/{key}"] = m[key]
    return flat


def load_runs(dirs: Sequence[str | Path]) -> list[tuple[str, dict]]:
    """(label, results) per directory; the label is the directory name, made unique if repeated."""
    runs, seen = [], set()
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run eval/run.py with --out {d} first")
        label = Path(d).resolve().name
        while label in seen:
            label += "'"
        seen.add(label)
        runs.append((label, json.loads(path.read_text())))
    return runs


def comparison_markdown(runs: list[tuple[str, dict]]) -> str:
    """One row per metric, one column per run (percentages), and a delta column for two runs."""
    metrics = [headline_metrics(r) for _, r in runs]
    names = list(dict.fromkeys(k for m in metrics for k in m))
    header = ["metric", *(label for label, _ in runs)] + (["Δ (2nd − 1st)"] if len(runs) == 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        values = [m.get(name) for m in metrics]
        cells = [
            f"{100 * v:.1f}" if v is not None and abs(v) <= 1.0 else ("–" if v is None else f"{v:.3g}")
            for v in values
        ]
        if len(runs) == 2:
            a, b = values
            cells.append(f"{100 * (b - a):+.1f}" if a is not None and b is not None else "–")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    models = "\n".join(f"- **{label}**: `{r['model']['path']}` ({r['model']['kind']})" for label, r in runs)
    return (
        f"# Comparison\n\n{models}\n\nNumbers are percentages.\n\n"
        + "\n".join(lines)
        + "\n\n![chart](compare.png)\n"
    )


def write_comparison(dirs: Sequence[str | Path], out: str | Path) -> Path:
    """compare.md, compare.json and compare.png under ``out``; returns the markdown path."""
    runs = load_runs(dirs)
    out = Path(out)
    metrics = {label: headline_metrics(r) for label, r in runs}
    names = list(dict.fromkeys(k for m in metrics.values() for k in m))
    chart = {name: {label: metrics[label].get(name) for label in metrics} for name in names}
    plot_bars(chart, "Side by side", out / "compare.png")
    write_json(
        out / "compare.json",
        {"runs": {label: str(d) for (label, _), d in zip(runs, dirs, strict=True)}, "metrics": metrics},
    )
    write_bytes_atomic(out / "compare.md", comparison_markdown(runs).encode("utf-8"))
    return out / "compare.md"
