"""DeepSpeed ZeRO-2 on two CPU processes (gloo): a few steps save a checkpoint (model dir + the
engine's partitioned optimizer state), and resuming from it reproduces the uninterrupted run."""

import shutil

import pytest
import torch

from cloc_mllm.training import checkpoint as ckpt
from cloc_mllm.training.distributed import SHM_DIR

from .pretrain_utils import (
    REPO,
    model_weights,
    run_train_script,
    tiny_config,
    tiny_world,
    torchrun,
    write_config,
)

pytestmark = pytest.mark.slow


def test_zero2_saves_and_resumes(tmp_path_factory, tmp_path):
    world = tiny_world(tmp_path_factory)
    config = tiny_config(world, tmp_path, max_steps=4, save_every=2, keep_last=3)
    path = write_config(config, tmp_path / "run.yaml")
    args = ["--config", str(path), "--deepspeed", str(REPO / "pretrain" / "ds_zero2.json")]
    segments_before = set(SHM_DIR.glob("deepspeed_allreduce_buffer_*"))
    run_train_script([*args, "--output-dir", str(tmp_path / "a")], launcher=torchrun())
    assert set(SHM_DIR.glob("deepspeed_allreduce_buffer_*")) <= segments_before  # the ranks freed theirs
    saved = ckpt.checkpoint_path(tmp_path / "a", 2)
    optimizer_shards = sorted(p.name for p in (saved / "deepspeed").rglob("zero_pp_rank_*_optim_states.pt"))
    assert len(optimizer_shards) == 2  # ZeRO split the optimizer state between the two ranks

    resumed_dir = ckpt.checkpoint_path(tmp_path / "b", 2)
    shutil.copytree(saved, resumed_dir)
    run_train_script([*args, "--output-dir", str(tmp_path / "b"), "--resume", "auto"], launcher=torchrun())
    expected = model_weights(ckpt.checkpoint_path(tmp_path / "a", 4))
    resumed = model_weights(ckpt.checkpoint_path(tmp_path / "b", 4))
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
