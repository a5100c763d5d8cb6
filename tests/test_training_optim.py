import math

import pytest
import torch

from cloc_mllm import CLOCModel
from cloc_mllm.training.config import PretrainConfig
from cloc_mllm.training.optim import (
    FUSED_ADAMW_DEVICES,
    adamw_kernel,
    build_optimizer,
    build_scheduler,
    clamp_temperatures,
    cosine_lr_factor,
    param_groups,
    warmup_cosine,
)


def test_weight_decay_only_on_matrices(tiny_config):
    model = CLOCModel(tiny_config)
    model.logit_bias.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    for expected in ("logit_scale", "region_logit_scale", "vision_model.embeddings.class_embedding"):
        assert expected in names
    assert "vision_model.post_layernorm.weight" in names and "text_projection.weight" not in names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "logit_bias" not in names  # frozen parameters are not optimised at all
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


def test_cosine_with_warmup():
    assert cosine_lr_factor(0, 4, 20, 0.0) == pytest.approx(0.25)
    assert cosine_lr_factor(3, 4, 20, 0.0) == pytest.approx(1.0)
    assert cosine_lr_factor(12, 4, 20, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert cosine_lr_factor(99, 4, 20, 0.1) == pytest.approx(0.1)


def test_scheduler_drives_adamw(tiny_config):
    model = CLOCModel(tiny_config)
    config = PretrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2, max_steps=6)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    assert optimizer.defaults["fused"] == ("cpu" in FUSED_ADAMW_DEVICES)  # fastest on CPU from torch 2.4
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])
    assert lrs[-1] > 1e-4 and scheduler.get_last_lr()[0] == pytest.approx(1e-4)


def test_temperatures_are_clamped(tiny_config):
    model = CLOCModel(tiny_config)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
        model.region_logit_scale.fill_(1.0)
    clamp_temperatures(model, math.log(100.0))
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    assert model.region_logit_scale.item() == pytest.approx(1.0)
    model.region_logit_scale.requires_grad_(False)
    with torch.no_grad():
        model.region_logit_scale.fill_(7.0)
    clamp_temperatures(model, math.log(100.0))
    assert model.region_logit_scale.item() == 7.0  # frozen: not trained, not touched


def test_warmup_cosine_rises_over_the_first_5_percent_then_decays_to_zero():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=2.0)
    schedule = warmup_cosine(optimizer, steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(2.0 / 5)  # 1 of 5 warm-up steps
    assert lrs[4] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 4 / 100)))  # warm-up done
    assert all(b < a for a, b in zip(lrs[4:], lrs[5:]))  # then only down
    assert lrs[-1] < 0.01


def test_adamw_kernel_follows_the_parameters_device():
    cpu = {"fused": True} if "cpu" in FUSED_ADAMW_DEVICES else {"foreach": True}
    assert adamw_kernel([torch.zeros(2)]) == cpu
    no_fused_kernel = torch.zeros(2, device="meta")
    assert adamw_kernel([torch.zeros(2), no_fused_kernel]) == {"foreach": True}


def test_chosen_adamw_kernel_matches_the_default_update(tiny_config):
    """Three steps of the built optimiser give the weights of torch's default (for-loop) AdamW."""
    torch.manual_seed(0)
    model = CLOCModel(tiny_config)
    reference = CLOCModel(tiny_config)
    reference.load_state_dict(model.state_dict())
    config = PretrainConfig(lr=1e-2, weight_decay=0.2)
    optimizer = build_optimizer(model, config)
    groups = param_groups(reference, config.weight_decay)
    plain = torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps
    )
    for _ in range(3):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for net, opt in ((model, optimizer), (reference, plain)):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
