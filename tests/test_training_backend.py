import json

import pytest
import torch

from cloc_mllm import CLOCModel
from cloc_mllm.training.backend import DeepSpeedBackend, deepspeed_config
from cloc_mllm.training.config import PretrainConfig
from cloc_mllm.training.distributed import free_port, init_distributed, shutdown
from cloc_mllm.training.model import freeze_unused_parameters

from .conftest import random_batch
from .pretrain_utils import REPO


def test_shipped_zero_configs_take_the_recipe_from_the_pretrain_config():
    config = PretrainConfig(
        global_batch_size=64, grad_accum_steps=2, grad_clip=0.5, lr=3e-4, weight_decay=0.1
    )
    for name in ("ds_zero1.json", "ds_zero2.json"):
        ds = deepspeed_config(str(REPO / "pretrain" / name), config, world_size=4)
        assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 8
        assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.5
        params = ds["optimizer"]["params"]
        assert ds["optimizer"]["type"] == "AdamW" and params["betas"] == [0.9, 0.98]
        assert params["lr"] == 3e-4 and params["weight_decay"] == 0.1 and params["torch_adam"] is True
    assert (
        deepspeed_config(str(REPO / "pretrain" / "ds_zero1.json"), config, 4)["zero_optimization"]["stage"]
        == 1
    )


def test_conflicting_deepspeed_values_are_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 128, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="train_batch_size=128 disagrees"):
        deepspeed_config(str(path), PretrainConfig(global_batch_size=64), 1)
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="leave 'optimizer'"):
        deepspeed_config(str(path), PretrainConfig(), 1)
    with pytest.raises(FileNotFoundError, match="no such DeepSpeed config"):
        deepspeed_config(str(tmp_path / "missing.json"), PretrainConfig(), 1)


def test_deepspeed_clamps_the_master_copy_of_the_temperature(tiny_config, monkeypatch):
    from deepspeed.utils import safe_get_full_fp32_param

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ctx = init_distributed("cpu", deepspeed=True)
    try:
        torch.manual_seed(0)
        model = CLOCModel(tiny_config)
        with torch.no_grad():
            model.logit_scale.fill_(5.0)  # above ln(100): the clamp must act
        freeze_unused_parameters(model)
        config = PretrainConfig(deepspeed=str(REPO / "pretrain" / "ds_zero2.json"), global_batch_size=4)
        backend = DeepSpeedBackend(model, config, ctx)
        loss = backend.module(**random_batch(tiny_config, batch_size=4), return_loss=True).loss
        backend.backward(loss, last=True)
        backend.step()
        assert float(safe_get_full_fp32_param(model.logit_scale)) > config.max_logit_scale
        backend.clamp_temperatures()
        assert float(model.logit_scale.detach()) == pytest.approx(config.max_logit_scale)
        assert float(safe_get_full_fp32_param(model.logit_scale)) == pytest.approx(config.max_logit_scale)
    finally:
        shutdown(ctx)
