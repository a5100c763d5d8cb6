"""Two CPU processes under torchrun (gloo) train the same model as one process on the same global
batch: each step's loss matches and the weights after 4 steps agree to 1e-5 (only the order of float
sums differs: the loss gathers features with gradients, DDP averages the per-rank shares)."""

import json

import pytest
import torch

from cloc_mllm.training import checkpoint as ckpt
from cloc_mllm.training import train

from .pretrain_utils import model_weights, run_train_script, tiny_config, tiny_world, torchrun, write_config

pytestmark = pytest.mark.slow


def _losses(run_dir):
    return [json.loads(line)["train/loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path_factory, tmp_path):
    world = tiny_world(tmp_path_factory)
    config = tiny_config(world, tmp_path / "one", max_steps=4, save_every=0, num_streams=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = model_weights(train(config))
    finally:
        torch.set_num_threads(threads)

    path = write_config(config, tmp_path / "run.yaml")
    run_train_script(["--config", str(path), "--output-dir", str(tmp_path / "two")], launcher=torchrun())
    double = model_weights(ckpt.checkpoint_path(tmp_path / "two", 4))
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "two"), rel=1e-5)
    worst = max((single[k] - double[k]).abs().max().item() for k in single)
    assert worst < 1e-5
