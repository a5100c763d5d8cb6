"""The main job's stages. Each writes into its own folder under the run directory and leaves a
``.done`` marker, so an interrupted run picks up at the first unfinished stage.

world → (VESL) → pretrain CLIP and CLOC → export towers → finetune a LLaVA on each → evaluate → report
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import cloc_mllm
from cloc_mllm.mllm.zero_configs import zero_config
from cloc_mllm.training.distributed import free_port, native_bf16, release_deepspeed_shm

from .config import PipelineConfig

logger = logging.getLogger(__name__)
ENCODERS = ("clip", "cloc")  # the two towers every claim compares, each with its LLaVA
CONTROL = "clip_phrases"  # the equal-supervision control of retrieval: pretrained and evaluated only
FINETUNE_MODULE = "cloc_mllm.mllm.finetune"
# Where the imported cloc_mllm lives (a checkout or site-packages): children import the same copy.
PACKAGE_PARENT = Path(cloc_mllm.__file__).resolve().parents[1]


def run_stage(directory: Path, name: str, fn: Callable[[], object]) -> float | None:
    """Run ``fn`` unless ``directory/.done`` exists; mark it done afterwards with its duration.

    Returns the stage's seconds: measured now, or read back from the marker of an earlier run (None
    when that marker predates recorded durations).
    """
    marker = directory / ".done"
    if marker.exists():
        logger.info("[%s] done already (%s)", name, directory)
        try:
            return float(marker.read_text())
        except ValueError:
            return None
    logger.info("[%s] start", name)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    marker.write_text(f"{seconds:.1f}\n")
    logger.info("[%s] finished in %.0f s", name, seconds)
    return seconds


# ----- world -------------------------------------------------------------------------------------


def make_world(config: PipelineConfig, world_dir: Path) -> None:
    from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world

    world = SyntheticWorldConfig(
        seed=config.seed,
        image_size=config.world_image_size,
        num_train=config.num_train,
        num_val=config.num_val,
        num_test=config.num_test,
    )
    write_world(world_dir, world)


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a library entry point run as a child process (``python -m cloc_mllm...``):
    the imported package's parent first on the module path, so the child (and every rank it launches)
    runs the ``cloc_mllm`` the main job imported, from a checkout never pip-installed or an installed
    copy alike, whatever the working directory."""
    path = os.pathsep.join(filter(None, (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **extra}


def pseudo_label(config: PipelineConfig, world_dir: Path, out_dir: Path) -> None:
    """VESL over the train shards: source captions kept, OWLv2 boxes for the extracted phrases."""
    command = [
        sys.executable, "-m", "cloc_mllm.vesl.cli",
        "--input", str(world_dir / "shards" / "train"),
        "--output", str(out_dir),
        "--detector", config.vesl_detector,
        "--caption-mode", "keep",
    ]
    subprocess.run(command, check=True, env=script_env())


def train_shards(config: PipelineConfig, run_dir: Path) -> str:
    if config.vesl_detector:
        return str(run_dir / "vesl")
    return str(run_dir / "world" / "shards" / "train")


# ----- pretraining -------------------------------------------------------------------------------


def pretrain(
    config: PipelineConfig, loss: str, shards: str, tokenizer: Path, out_dir: Path, model_overrides: dict | None = None
) -> None:
    """One pretraining run; CLOC, the CLIP baseline and its control differ only in ``loss`` (and CLOC's
    region head). ``model_overrides``: CLOCConfig fields over the preset (studies vary the model so);
    CLOC's ``grounding_cell_size`` goes there unless they set it (only CLOC's loss trains grounding)."""
    from cloc_mllm.training.config import PretrainConfig
    from cloc_mllm.training.trainer import train

    overrides = dict(model_overrides or {})
    if loss == "cloc" and config.grounding_cell_size != 1:
        prompter = {"grounding_cell_size": config.grounding_cell_size, **overrides.get("prompter_config", {})}
        overrides["prompter_config"] = prompter
    train(
        PretrainConfig(
            preset=config.preset,
            model_overrides=overrides,
            loss=loss,
            region_head=config.region_head if loss == "cloc" else "prompter",
            train_shards=shards,
            tokenizer=str(tokenizer),
            max_regions=config.max_regions,
            global_batch_size=config.pretrain_batch_size,
            max_steps=config.pretrain_steps,
            lr=config.pretrain_lr,
            warmup_steps=config.warmup_steps,
            num_workers=1,
            output_dir=str(out_dir),
            seed=config.seed,
            save_every=0,
            keep_last=1,
            log_every=10,
            resume="auto",
            export_vision_tower=True,
        )
    )


def final_checkpoint(pretrain_dir: Path) -> Path:
    """The ``save_pretrained`` directory of the last checkpoint of a pretraining run."""
    from cloc_mllm.training.checkpoint import MODEL_DIR, list_checkpoints

    checkpoints = list_checkpoints(pretrain_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{pretrain_dir}: no checkpoint; did the pretraining stage fail?")
    return checkpoints[-1] / MODEL_DIR


def exported_tower(pretrain_dir: Path) -> Path:
    tower = pretrain_dir / "vision_tower"
    if not (tower / "config.json").is_file():
        raise FileNotFoundError(f"{tower}: no exported vision tower")
    return tower


# ----- LLaVA finetuning --------------------------------------------------------------------------


def instruction_data(
    config: PipelineConfig, world_dir: Path, out_path: Path, kinds: list[str], region_token: bool = False
) -> None:
    """Conversations of ``kinds`` (grounding / referring chat turns) from RefCOCO/RefCOCO+/RefCOCOg
    train (refer layout); with ``region_token`` the same turns with a ``<region>`` after each referred
    box (Ferret*); with ``config.point_cells`` grounding answers that point at a cell of the preset's
    tower first."""
    from cloc_mllm.configuration_cloc import CLOCConfig
    from cloc_mllm.data.refer import load_refer
    from cloc_mllm.mllm.instruct_builders import facts_to_conversations, refer_facts, write_records
    from cloc_mllm.mllm.pointing import tower_grid

    grid = tower_grid(CLOCConfig.from_preset(config.preset).vision_config) if config.point_cells else 0
    records = []
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        refs = load_refer(world_dir / "refer", dataset=dataset, split_by=split_by, split="train")
        records += facts_to_conversations(
            refer_facts(refs), dataset, kinds=kinds, image_root=world_dir / "refer", seed=config.seed,
            region_token=region_token, point_grid=grid,
        )
    write_records(records, out_path)


def language_model(config: PipelineConfig, out_dir: Path) -> None:
    """The pretrained LLM both LLaVAs share, as a plain HF directory (GGUF de-quantised, cut to
    ``llm_layers`` when set), so every rank of every stage loads the same weights fast."""
    from cloc_mllm.mllm.llm_source import LLMSourceArguments, write_plain_llm

    write_plain_llm(LLMSourceArguments(source=config.llm, out=str(out_dir), num_layers=config.llm_layers or None))


def finetune(
    config: PipelineConfig, llm: Path, tower: Path, data: Path, image_root: Path, out_dir: Path,
    projector_only: bool, adapter: Path | None = None, region_prompts: bool = False, save_steps: int = 0,
    keep_checkpoints: bool = True,
) -> None:
    """One LLaVA-1.5 stage with ``deepspeed finetune/train.py`` (plain python when no DeepSpeed config
    is given): stage 1 (``projector_only``: tower and LLM frozen, ``align_steps`` at ``align_lr``) or
    stage 2 (the LLM trains too, fully or with LoRA; from the stage-1 projector in ``adapter``).
    ``region_prompts``: Ferret*, ``tower`` is a whole CLOC checkpoint whose frozen Prompter embeds the
    ``<region>`` boxes; the region MLP trains. ``save_steps``: a Trainer checkpoint every that many steps
    (a killed run resumes from the last; each is a whole LLaVA that evaluates as one); with
    ``keep_checkpoints=False`` only the newest is kept and none once the stage has finished."""
    steps, lr = (config.align_steps, config.align_lr) if projector_only else (config.finetune_steps, config.finetune_lr)
    ranks = config.num_ranks if config.deepspeed else 1  # plain python is one process
    per_rank = max(1, config.finetune_batch_size // ranks)
    args = [
        "--model_name_or_path", str(llm), "--vision_tower", str(tower),
        "--data_path", str(data), "--image_folder", str(image_root), "--output_dir", str(out_dir),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", str(config.vision_select_layer),
        "--freeze_vision_tower", "True",
        "--version", config.conversation_template, "--max_steps", str(steps), "--per_device_train_batch_size", str(per_rank),
        "--learning_rate", str(lr), "--lr_scheduler_type", "cosine", "--warmup_steps", str(max(1, steps // 20)),
        "--weight_decay", "0.0", "--model_max_length", "512", "--logging_steps", "10",
        *(["--save_strategy", "steps", "--save_steps", str(save_steps)] if save_steps else ["--save_strategy", "no"]),
        *([] if keep_checkpoints or not save_steps else ["--save_total_limit", "1"]),
        "--report_to", "tensorboard", "--seed", str(config.seed),
        "--dataloader_num_workers", "0",
    ]
    if adapter is not None:
        args += ["--pretrain_mm_mlp_adapter", str(adapter)]
    if region_prompts:
        args += ["--region_prompts", "True"]
    if config.patch_position:
        args += ["--mm_patch_position", "True", "--mm_patch_position_scale", config.patch_position_scale,
                 "--mm_patch_position_init", config.patch_position_init]  # fmt: skip
    if config.patch_order != "row":
        args += ["--mm_patch_order", config.patch_order]
    if config.point_cells:
        args += ["--mm_point_cells", "True"]
    if config.point_to_patches and not region_prompts:
        args += ["--mm_point_to_patches", "True"]
    if projector_only:
        args += ["--tune_mm_mlp_adapter", "True"]
    elif config.lora_r:
        args += ["--lora_enable", "True", "--lora_r", str(config.lora_r), "--lora_alpha", str(2 * config.lora_r)]
    elif config.freeze_embeddings:
        args += ["--freeze_embeddings", "True"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.finetune_precision == "bf16" or (config.finetune_precision == "auto" and native_bf16(device)):
        args += ["--bf16", "True"]
    if device.type == "cpu":
        args += ["--use_cpu", "True"]  # CPU ranks talk over gloo
    port = None
    if config.deepspeed:
        if importlib.util.find_spec("deepspeed") is None:
            raise RuntimeError("--deepspeed is set but DeepSpeed is not installed (pip install deepspeed)")
        port = free_port()
        # DeepSpeed's launcher run by this interpreter starts its ranks with this interpreter too
        command = [
            sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(config.num_ranks),
            "--master_port", str(port), "--module", FINETUNE_MODULE, *args, "--deepspeed", str(zero_config(config.deepspeed)),
        ]
    else:
        command = [sys.executable, "-m", FINETUNE_MODULE, *args]
    threads = str(max(1, (os.cpu_count() or 1) // ranks))
    try:
        subprocess.run(command, check=True, env=script_env(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=threads))
    finally:  # the ranks free their own segments on success; this covers a crashed rank
        release_deepspeed_shm(port)
    if not keep_checkpoints:  # the stage's result is out_dir itself; its resume points only cost disk now
        for checkpoint in out_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)


# ----- evaluation --------------------------------------------------------------------------------


def evaluate(
    config: PipelineConfig, model: Path, world_dir: Path, out_dir: Path, suite: str, region_head: str | None = None
) -> None:
    from cloc_mllm.eval.runner import EvalArguments, run_evaluation

    run_evaluation(
        EvalArguments(
            model=str(model),
            data_root=str(world_dir),
            out=str(out_dir),
            suite=suite,
            benchmarks=config.benchmarks,
            max_new_tokens=config.max_new_tokens,
            coco_split="test",
            tokenizer=str(world_dir / "tokenizer"),
            region_head=region_head,
            templates="plain",  # the world's region phrases are bare "colour shape" names
            limit=config.eval_limit or None,
            gallery_size=8,
        )
    )


def read_results(directory: Path, name: str = "results.json") -> dict:
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation results missing")
    return json.loads(path.read_text())
