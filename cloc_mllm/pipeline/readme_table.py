"""The README's results tables, generated from a committed main-job report, never typed by hand.

``python -m cloc_mllm.pipeline.readme_table docs/results/reproduce/report.json --name reproduce``
rewrites the block between ``<!-- results:reproduce -->`` and ``<!-- /results:reproduce -->`` in
README.md: the run's configuration in one sentence, every claim with its target, the LLaVA gap's
interval, the centre-error target and the reference answers a reader calibrates the figures with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloc_mllm.atomic_io import write_text_atomic
from cloc_mllm.pipeline.report import (
    REFERENCE_KEYS,
    describe_llm,
    format_cell,
    markdown_table,
    metric_at,
    refer_splits,
)

REFERENCE_LABELS = dict(zip(REFERENCE_KEYS, ("constant mean box", "random object of the image", "random object of the named class")))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def configuration_sentence(report: dict) -> str:
    """What was run, in the words a reader needs to judge the figures."""
    c, timings = report["config"], report.get("timings_s", {})
    total = sum(v for v in timings.values() if isinstance(v, (int, float)))
    controls = " and the equal-supervision control (CLIP + region phrases)" if c.get("retrieval_control") else ""
    ferret = ", Ferret* from LLaVA-CLOC's stage-1 projector" if c.get("ferret_star") else ""
    stage2 = f"LoRA r={c['lora_r']}" if c.get("lora_r") else "the whole LLM"
    cell = c.get("grounding_cell_size", 1)
    cells = f", grounding bias in {cell}x{cell}-patch cells" if cell != 1 else ""
    positions = f", {c.get('patch_position_scale', 'unit')}-scaled patch positions" if c.get("patch_position") else ""
    return (
        f"`--profile {c['profile']}` (seed {c['seed']}): {c['num_train']} synthetic train images; CLOC "
        f"(`region_head: {report.get('region_head', c.get('region_head'))}`{cells}), the CLIP-only baseline{controls}, "
        f"{c['pretrain_steps']} pretraining steps of {c['pretrain_batch_size']} each, `{c['preset']}` preset; per tower "
        f"{c['align_steps']} stage-1 + {c['finetune_steps']} stage-2 steps of {c['finetune_batch_size']} records "
        f"({stage2} in stage 2{positions}){ferret}; LLM {describe_llm(report['llm'])}; {c['eval_limit'] or 'all'} test items "
        f"a split; stage times summed {total / 60:.0f} min."
    )


def results_table(report: dict) -> str:
    """Claims, gap, centre-error target and references of one report, figures in %."""
    metrics = report["metrics"]
    rows = [[c["name"], c["clip"], c["cloc"], c["target"], c["target_met"]] for c in report["claims"]]
    gap = report.get("mllm_gap")
    if gap:
        interval = f"{100 * gap['gap']:+.1f} [{100 * gap['low']:+.1f}, {100 * gap['high']:+.1f}]"
        rows.append([f"LLaVA-CLOC minus LLaVA-CLIP, {100 * gap['confidence']:g}% paired bootstrap interval", "", interval, "", ""])
    splits = refer_splits(metrics["llava_cloc"])
    below = {}
    for name in ("llava_clip", "llava_cloc"):
        where = [metrics[name].get("grounding", {}).get(s, {}).get("localisation", {}) for s in splits]
        below[name] = sum(1 for w in where if "centre_error" in w and w["centre_error"] < w["centre_error_blind"])
    if splits:
        rows.append([
            "MLLM centre error below the blind guess (RefCOCO-format splits)", f"{below['llava_clip']} of {len(splits)}",
            f"{below['llava_cloc']} of {len(splits)}", "LLaVA-CLOC on every split", below["llava_cloc"] == len(splits),
        ])  # fmt: skip
    table = markdown_table(["claim", "CLIP baseline", "CLOC", "target", "target met"], rows)
    reference_means = {
        key: _mean([metric_at(metrics["llava_cloc"], "grounding", s, "reference", key) for s in splits]) for key in REFERENCE_LABELS
    }
    references = [f"{label} {format_cell(reference_means[key])}" for key, label in REFERENCE_LABELS.items()]
    control = metric_at(metrics.get("clip_phrases", {}), "encoder", "image_text_retrieval", "i2t_R@1")
    notes = [f"Grounding references (Acc@0.5, mean of the same splits): {', '.join(references)}."]
    landing = {
        name: [_mean([metric_at(metrics[name], "grounding", s, "objects", key) for s in splits]) for key in ("hit", "referred_of_hits")]
        for name in ("llava_clip", "llava_cloc")
    }  # fmt: skip
    if landing["llava_cloc"][0] is not None:
        notes.append(
            "MLLM answers on some annotated object of the image (IoU >= 0.5, mean of the same splits): LLaVA-CLIP "
            f"{format_cell(landing['llava_clip'][0])}, LLaVA-CLOC {format_cell(landing['llava_cloc'][0])}; of those on "
            f"the referred object {format_cell(landing['llava_clip'][1])} and {format_cell(landing['llava_cloc'][1])} "
            f"(a random object of the image is the referred one {format_cell(reference_means['random_object_acc@0.5'])}: a grounder that ignores "
            "the words scores that)."
        )
    if control is not None:
        notes.append(f"Image -> text R@1 of the equal-supervision control (CLIP + region phrases): {format_cell(control)}.")
    return table + "\n\n" + " ".join(notes)


def render(report: dict, source: str) -> str:
    return f"{configuration_sentence(report)} Generated from [{source}]({source}).\n\n{results_table(report)}"


def replace_block(text: str, name: str, body: str, where: str = "README.md") -> str:
    """``text`` with the block between the ``name`` markers replaced by ``body``."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{where}: needs exactly one '{start}' followed by one '{end}'")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="A main-job report.json (committed under docs/results/).")
    parser.add_argument("--name", required=True, help="Marker name of the README block (results:NAME).")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    source = args.report.resolve().relative_to(args.readme.resolve().parent).as_posix()
    text = args.readme.read_text()
    write_text_atomic(args.readme, replace_block(text, args.name, render(report, source), str(args.readme)))


if __name__ == "__main__":
    main()
