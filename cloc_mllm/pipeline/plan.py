"""The main job as a declared list of stages: what each one reads, where it writes, what it calls.

``plan(config)`` is data: the runner walks it in order (skipping stages already marked done), the
tests check that every stage reads only what an earlier one wrote, and
``python -m cloc_mllm.pipeline --list_stages`` prints it without running anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import stages
from .config import PipelineConfig


@dataclass(frozen=True)
class Stage:
    name: str  # also its key in the report's timings
    directory: Path  # its outputs and its ``.done`` marker
    inputs: tuple[Path, ...]  # what earlier stages wrote that it reads
    run: Callable[[], object]
    files: tuple[Path, ...] = ()  # what it writes outside ``directory``

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.directory, *self.files)


@dataclass(frozen=True)
class Evaluation:
    """One model evaluated with one suite; its results become ``metrics[name]`` of the report."""

    name: str
    model_stage: Path  # the stage directory the model comes from
    suite: str
    region_head: str | None = None
    pretrained: bool = True  # the model is that pretraining's last checkpoint (else the directory itself)

    def model(self) -> Path:
        return stages.final_checkpoint(self.model_stage) if self.pretrained else self.model_stage


def pretrainings(config: PipelineConfig) -> tuple[str, ...]:
    return (*stages.ENCODERS, stages.CONTROL) if config.retrieval_control else stages.ENCODERS


def evaluations(config: PipelineConfig) -> list[Evaluation]:
    run = Path(config.out_dir)
    pretrained, tuned = run / "pretrain", run / "finetune"
    listed = [
        Evaluation("clip", pretrained / "clip", "encoder", "clip_roialign"),
        # the CLIP baseline's strongest fair region read-out (its last layer's patch outputs are untrained)
        Evaluation("clip_maskclip", pretrained / "clip", "regions", "clip_maskclip"),
        Evaluation("cloc", pretrained / "cloc", "all"),
    ]
    if config.retrieval_control:
        listed.append(Evaluation(stages.CONTROL, pretrained / stages.CONTROL, "encoder", "clip_maskclip"))
    llavas = [f"llava_{loss}" for loss in stages.ENCODERS] + (["llava_cloc_regions"] if config.ferret_star else [])
    listed += [Evaluation(name, tuned / name, "grounding", pretrained=False) for name in llavas]
    return listed


def plan(config: PipelineConfig) -> list[Stage]:
    """Every stage of the main job in the order it runs. Paths resolve inside ``run`` callables, so
    planning needs nothing on disk (a checkpoint's name is known once its pretraining has run)."""
    run = Path(config.out_dir)
    world, llm = run / "world", run / "finetune" / "llm"
    data, region_data = run / "finetune" / "train.json", run / "finetune" / "train_regions.json"
    kinds = config.instruction_kinds.split(",")
    planned = [Stage("world", world, (), lambda: stages.make_world(config, world))]
    if config.vesl_detector:
        planned.append(Stage("vesl", run / "vesl", (world,), lambda: stages.pseudo_label(config, world, run / "vesl")))
    shards = stages.train_shards(config, run)
    for loss in pretrainings(config):
        out = run / "pretrain" / loss
        planned.append(Stage(
            f"pretrain_{loss}", out, (world, run / "vesl") if config.vesl_detector else (world,),
            lambda out=out, loss=loss: stages.pretrain(config, loss, shards, world / "tokenizer", out),
        ))  # fmt: skip
    planned += [
        Stage("instruction_data", run / "finetune" / "data", (world,),
              lambda: stages.instruction_data(config, world, data, kinds), files=(data,)),
        Stage("language_model", llm, (), lambda: stages.language_model(config, llm)),
    ]  # fmt: skip
    align = {loss: run / "finetune" / f"align_{loss}" if config.align_steps else None for loss in stages.ENCODERS}
    checkpoints = dict(save_steps=config.save_steps, keep_checkpoints=False)  # resume points inside each LLaVA stage
    for loss in stages.ENCODERS:  # LLaVA-1.5 per tower: stage 1 aligns a projector, stage 2 tunes the LLM too
        pretrained, out, adapter = run / "pretrain" / loss, run / "finetune" / f"llava_{loss}", align[loss]
        needs = (pretrained, data, llm, world)
        if adapter is not None:
            planned.append(Stage(f"align_{loss}", adapter, needs, lambda p=pretrained, adapter=adapter: stages.finetune(
                config, llm, stages.exported_tower(p), data, world / "refer", adapter, projector_only=True, **checkpoints)))
        planned.append(Stage(
            f"finetune_{loss}", out, needs + ((adapter,) if adapter else ()),
            lambda p=pretrained, out=out, adapter=adapter: stages.finetune(
                config, llm, stages.exported_tower(p), data, world / "refer", out, projector_only=False, adapter=adapter,
                **checkpoints),
        ))  # fmt: skip
    if config.ferret_star:  # LLaVA-CLOC again, with the Prompter's region token after each referred box
        ferret, cloc = run / "finetune" / "llava_cloc_regions", run / "pretrain" / "cloc"
        planned += [
            Stage("instruction_data_regions", run / "finetune" / "data_regions", (world,),
                  lambda: stages.instruction_data(config, world, region_data, kinds, region_token=True),
                  files=(region_data,)),
            Stage("finetune_cloc_regions", ferret, (cloc, region_data, llm, world) + ((align["cloc"],) if align["cloc"] else ()),
                  lambda: stages.finetune(config, llm, stages.final_checkpoint(cloc), region_data, world / "refer",
                                          ferret, projector_only=False, adapter=align["cloc"], region_prompts=True,
                                          **checkpoints)),
        ]  # fmt: skip
    for e in evaluations(config):
        out = run / "eval" / e.name
        planned.append(Stage(
            f"eval_{e.name}", out, (e.model_stage, world),
            lambda e=e, out=out: stages.evaluate(config, e.model(), world, out, e.suite, e.region_head),
        ))  # fmt: skip
    return planned


def describe(planned: list[Stage], root: Path) -> str:
    """One line per stage: ``name  inputs -> outputs`` relative to the run directory."""

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    width = max(len(s.name) for s in planned)
    return "\n".join(
        f"{s.name:<{width}}  {', '.join(map(rel, s.inputs)) or '-'} -> {', '.join(map(rel, s.outputs))}" for s in planned
    )
