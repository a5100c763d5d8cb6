"""The main job in one command: ``python -m cloc_mllm.pipeline --profile quick``.

Makes the synthetic world, pretrains CLOC and a CLIP-only baseline on the same data, steps and seed
(and CLIP with CLOC's region phrases as extra texts, the equal-supervision control), exports the
towers, trains a LLaVA on CLIP's and CLOC's (LLaVA-1.5's two stages with DeepSpeed, on one pretrained
LLM: SmolLM2-135M-Instruct from its wheel by default), evaluates them all, and writes
``OUT/report.md`` + ``report.json`` + plots. Re-running resumes at the first unfinished stage.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, fields
from pathlib import Path

from transformers import HfArgumentParser

from cloc_mllm.mllm.llm_source import SOURCE_FILE

from . import stages
from .config import PipelineConfig, config_for_profile
from .report import write_report

logger = logging.getLogger("cloc_mllm.pipeline")


def parse_config(argv: list[str] | None = None) -> PipelineConfig:
    """Profile first, then only the flags the user actually gave override the profile's sizes."""
    parser = HfArgumentParser(PipelineConfig)
    argv = sys.argv[1:] if argv is None else argv
    (parsed,) = parser.parse_args_into_dataclasses(args=argv)
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    overrides = {f.name: getattr(parsed, f.name) for f in fields(PipelineConfig) if f.name in given - {"profile"}}
    return config_for_profile(parsed.profile, **overrides)


def same_settings(saved: dict, config: PipelineConfig) -> bool:
    """Whether a run directory's saved settings are ``config``'s. A field added to PipelineConfig after
    the run was made counts as the same while ``config`` keeps its default, so old runs still resume."""
    current = asdict(config)
    defaults = {f.name: f.default for f in fields(PipelineConfig)}
    added = {k: v for k, v in current.items() if k not in saved and v == defaults[k]}
    return {**saved, **added} == current


def run_pipeline(config: PipelineConfig) -> dict:
    """Run every stage (skipping finished ones) and return the report dict."""
    run = Path(config.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "pipeline_config.json"
    if saved.is_file() and not same_settings(json.loads(saved.read_text()), config):
        raise ValueError(f"{saved}: this run directory was made with other settings; use a new --out_dir")
    saved.write_text(json.dumps(asdict(config), indent=1))
    world = run / "world"
    timings: dict[str, float | None] = {}

    def timed(directory: Path, name: str, fn) -> None:
        timings[name] = stages.run_stage(directory, name, fn)

    timed(world, "world", lambda: stages.make_world(config, world))
    if config.vesl_detector:
        timed(run / "vesl", "vesl", lambda: stages.pseudo_label(config, world, run / "vesl"))
    shards = stages.train_shards(config, run)
    pretrainings = (*stages.ENCODERS, stages.CONTROL) if config.retrieval_control else stages.ENCODERS
    for loss in pretrainings:
        out = run / "pretrain" / loss
        timed(out, f"pretrain_{loss}", lambda out=out, loss=loss: stages.pretrain(config, loss, shards, world / "tokenizer", out))

    data, llm = run / "finetune" / "train.json", run / "finetune" / "llm"
    kinds = config.instruction_kinds.split(",")
    timed(run / "finetune" / "data", "instruction_data", lambda: stages.instruction_data(config, world, data, kinds))
    timed(llm, "language_model", lambda: stages.language_model(config, llm))
    for loss in stages.ENCODERS:  # LLaVA-1.5 per tower: stage 1 aligns a projector, stage 2 tunes the LLM too
        tower, out = stages.exported_tower(run / "pretrain" / loss), run / "finetune" / f"llava_{loss}"
        adapter = run / "finetune" / f"align_{loss}" if config.align_steps else None
        if adapter is not None:
            timed(adapter, f"align_{loss}", lambda tower=tower, adapter=adapter: stages.finetune(
                config, llm, tower, data, world / "refer", adapter, projector_only=True))
        timed(out, f"finetune_{loss}", lambda tower=tower, out=out, adapter=adapter: stages.finetune(
            config, llm, tower, data, world / "refer", out, projector_only=False, adapter=adapter))
    ferret = run / "finetune" / "llava_cloc_regions"
    if config.ferret_star:  # LLaVA-CLOC again, with the Prompter's region token after each referred box
        region_data = run / "finetune" / "train_regions.json"
        timed(run / "finetune" / "data_regions", "instruction_data_regions",
              lambda: stages.instruction_data(config, world, region_data, kinds, region_token=True))
        adapter = run / "finetune" / "align_cloc" if config.align_steps else None
        timed(ferret, "finetune_cloc_regions", lambda: stages.finetune(
            config, llm, stages.final_checkpoint(run / "pretrain" / "cloc"), region_data, world / "refer", ferret,
            projector_only=False, adapter=adapter, region_prompts=True))

    evaluations = {
        "clip": (stages.final_checkpoint(run / "pretrain" / "clip"), "encoder", "clip_roialign"),
        # the CLIP baseline's strongest fair region read-out (its last layer's patch outputs are untrained)
        "clip_maskclip": (stages.final_checkpoint(run / "pretrain" / "clip"), "regions", "clip_maskclip"),
        "cloc": (stages.final_checkpoint(run / "pretrain" / "cloc"), "all", None),
        **({stages.CONTROL: (stages.final_checkpoint(run / "pretrain" / stages.CONTROL), "encoder", "clip_maskclip")}
           if config.retrieval_control else {}),
        "llava_clip": (run / "finetune" / "llava_clip", "grounding", None),
        "llava_cloc": (run / "finetune" / "llava_cloc", "grounding", None),
        **({"llava_cloc_regions": (ferret, "grounding", None)} if config.ferret_star else {}),
    }
    metrics = {}
    for name, (model, suite, head) in evaluations.items():
        out = run / "eval" / name
        timed(out, f"eval_{name}", lambda model=model, out=out, suite=suite, head=head: stages.evaluate(config, model, world, out, suite, head))
        metrics[name] = stages.read_results(out)
    logs = {loss: _read_jsonl(run / "pretrain" / loss / "train_log.jsonl") for loss in pretrainings}
    llm_source = json.loads((llm / SOURCE_FILE).read_text())
    report = write_report(run, asdict(config), metrics, logs, timings, llm_source)
    logger.info("report: %s", run / "report.md")
    return report


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = run_pipeline(parse_config(argv))
    for claim in report["claims"]:
        status = "MET" if claim["target_met"] else ("direction ok" if claim["direction_ok"] else "not met")
        clip, cloc = (f"{100 * v:.1f}%" if v is not None else "—" for v in (claim["clip"], claim["cloc"]))
        print(f"{claim['name']}: CLIP {clip} CLOC {cloc} -> {status}")


if __name__ == "__main__":
    main()
