"""Kill a training process with SIGKILL mid-run, resume it, and get bit-for-bit the weights of a run
that was never interrupted (CPU, one thread, a DataLoader worker process and a shuffle buffer)."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from cloc_mllm.training import checkpoint as ckpt

from .pretrain_utils import (
    REPO,
    model_weights,
    run_train_script,
    script_env,
    tiny_config,
    tiny_world,
    write_config,
)

pytestmark = pytest.mark.slow


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path_factory, tmp_path):
    world = tiny_world(tmp_path_factory)
    # 12 steps x 4 samples per stream = 3 epochs of each stream's 16 samples: resumes cross epochs.
    config = tiny_config(world, tmp_path, max_steps=12, save_every=2, keep_last=2, num_workers=1, log_every=4)
    path = write_config(config, tmp_path / "run.yaml")
    command = [sys.executable, str(REPO / "pretrain" / "train.py"), "--config", str(path)]
    reference = subprocess.Popen(
        command + ["--output-dir", str(tmp_path / "reference")],
        env=script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    victim = subprocess.Popen(
        command + ["--output-dir", str(tmp_path / "victim")],
        env=script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = ckpt.checkpoint_path(tmp_path / "victim", 2)
    deadline = time.monotonic() + 180
    while not first.exists():
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    reference.wait(timeout=180)
    assert reference.returncode == 0

    killed_at = ckpt.checkpoint_step(ckpt.list_checkpoints(tmp_path / "victim")[-1])
    assert killed_at < 12
    run_train_script(["--config", str(path), "--output-dir", str(tmp_path / "victim"), "--resume", "auto"])
    expected = model_weights(ckpt.checkpoint_path(tmp_path / "reference", 12))
    resumed = model_weights(ckpt.checkpoint_path(tmp_path / "victim", 12))
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    # The optimiser state and data position were restored too, not only the weights.
    a = ckpt.load_state(ckpt.checkpoint_path(tmp_path / "reference", 12) / ckpt.TRAINER_STATE)
    b = ckpt.load_state(ckpt.checkpoint_path(tmp_path / "victim", 12) / ckpt.TRAINER_STATE)
    assert torch.equal(a["data"]["positions"], b["data"]["positions"])
    assert all(
        torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
    )
