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
from .config import RUN_CONTROL_FIELDS, PipelineConfig, config_for_profile
from .plan import describe, evaluations, plan, pretrainings
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
    the run was made counts as the same while ``config`` keeps its default, so old runs still resume;
    RUN_CONTROL_FIELDS (checkpoint cadence) never count."""
    current = {k: v for k, v in asdict(config).items() if k not in RUN_CONTROL_FIELDS}
    saved = {k: v for k, v in saved.items() if k not in RUN_CONTROL_FIELDS}
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
    timings = {stage.name: stages.run_stage(stage.directory, stage.name, stage.run) for stage in plan(config)}
    metrics = {e.name: stages.read_results(run / "eval" / e.name) for e in evaluations(config)}
    logs = {loss: _read_jsonl(run / "pretrain" / loss / "train_log.jsonl") for loss in pretrainings(config)}
    llm_source = json.loads((run / "finetune" / "llm" / SOURCE_FILE).read_text())
    report = write_report(run, asdict(config), metrics, logs, timings, llm_source)
    logger.info("report: %s", run / "report.md")
    return report


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    """``--list_stages`` prints the plan of the given profile and flags (what each stage reads and
    where it writes) and runs nothing."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--list_stages" in argv:
        argv.remove("--list_stages")
        config = parse_config(argv)
        print(describe(plan(config), Path(config.out_dir)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = run_pipeline(parse_config(argv))
    for claim in report["claims"]:
        status = "MET" if claim["target_met"] else ("direction ok" if claim["direction_ok"] else "not met")
        clip, cloc = (f"{100 * v:.1f}%" if v is not None else "—" for v in (claim["clip"], claim["cloc"]))
        print(f"{claim['name']}: CLIP {clip} CLOC {cloc} -> {status}")


if __name__ == "__main__":
    main()
