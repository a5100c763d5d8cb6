"""Shared pieces of the pretraining tests: a tiny synthetic world, a tiny model config, script runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from cloc_mllm.training import PretrainConfig

REPO = Path(__file__).resolve().parents[1]

# Width 32, two layers, 32 px images in 4x4 patches: a step takes milliseconds on one CPU thread.
TINY_MODEL = {
    "projection_dim": 32,
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
    },
    "prompter_config": {"hidden_size": 32, "intermediate_size": 64},
}


def tiny_world(tmp_path_factory) -> Path:
    """32 train images in 8 shards of 4 (+ val/test, tokenizer, COCO json), made once per session."""
    from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world

    root = tmp_path_factory.getbasetemp() / "pretrain_world"
    if not (root / "world.json").is_file():
        cfg = SyntheticWorldConfig(
            num_train=32,
            num_val=8,
            num_test=4,
            image_size=32,
            images_per_shard=4,
            max_objects=3,
            min_object_size=0.25,
            max_object_size=0.45,
        )
        write_world(root, cfg, formats=["shards", "tokenizer", "coco"])
    return root


def tiny_config(world: Path, output_dir: Path, **overrides) -> PretrainConfig:
    """A run over the tiny world: global batch 8 from 2 streams, no worker processes."""
    values = {
        "preset": "tiny",
        "model_overrides": TINY_MODEL,
        "train_shards": str(world / "shards" / "train"),
        "tokenizer": str(world / "tokenizer"),
        "output_dir": str(output_dir),
        "global_batch_size": 8,
        "num_streams": 2,
        "num_workers": 0,
        "shuffle_buffer": 6,
        "warmup_steps": 2,
        "max_steps": 4,
        "save_every": 2,
        "log_every": 1,
        "keep_last": 2,
        "lr": 1e-3,
        **overrides,
    }
    return PretrainConfig.from_dict(values).validate()


def write_config(config: PretrainConfig, path: Path) -> Path:
    config.save(path)
    return path


def script_env() -> dict[str, str]:
    """One thread per process (the test machine is shared) and the repo importable."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    return env


def torchrun(nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` with ``nproc`` local processes; ``--standalone`` lets it pick
    a free port itself (no race with other jobs on the machine)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def run_train_script(
    args: list[str], launcher: list[str] | None = None, timeout: float = 240, cwd: Path = REPO
):
    """``[launcher] pretrain/train.py args`` run in ``cwd``; raises with the output tail when it fails."""
    command = (launcher or [sys.executable]) + [str(REPO / "pretrain" / "train.py"), *args]
    result = subprocess.run(
        command, env=script_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model" / "model.safetensors"))
