"""How gradients become updates: plain PyTorch (one process or DDP) or a DeepSpeed ZeRO-1/2 engine.

Both take the *un-averaged* per-rank loss share of ``CLOCLoss`` (already multiplied by the world
size), so DDP's / DeepSpeed's gradient averaging gives the exact gradient of the global batch.
Both expose the same small surface to the trainer: forward module, backward, step, lr, save/load.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .config import PretrainConfig
from .distributed import DistContext, deepspeed_broadcast_of_scalars
from .optim import (
    TEMPERATURE_NAMES,
    adamw_kernel,
    build_optimizer,
    build_scheduler,
    clamp_temperatures,
    param_groups,
)

DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


class TorchBackend:
    """AdamW + cosine schedule over the trainable parameters, DDP-wrapped when there are several ranks."""

    def __init__(self, model: nn.Module, config: PretrainConfig, ctx: DistContext):
        self.model, self.config = model, config
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._norm = torch.zeros(())
        self.module: nn.Module = model
        if ctx.world_size > 1:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=device_ids)

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if last or not isinstance(self.module, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def backward(self, loss: Tensor, last: bool) -> None:
        (loss / self.config.grad_accum_steps).backward()

    def clip_gradients(self) -> Tensor:
        """Clip (when configured); the global gradient norm, inf/nan if any gradient is."""
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        self._norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return self._norm

    def step(self) -> Tensor:
        """Apply the update; returns the (pre-clip) gradient norm."""
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._norm

    def clamp_temperatures(self) -> None:
        clamp_temperatures(self.model, self.config.max_logit_scale)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, directory: Path) -> None:
        """Nothing beyond ``state_dict``: the optimizer state is the same on every rank."""

    def load(self, checkpoint: Path, trainer_state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])


def deepspeed_config(path: str, config: PretrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed json with batch sizes, clipping and the AdamW recipe filled in from ``config``.

    Missing or ``"auto"`` entries are filled; an explicit value that disagrees is an error, so the
    PretrainConfig stays the one description of the recipe.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such DeepSpeed config")
    ds = json.loads(file.read_text())
    micro = config.global_batch_size // (world_size * config.grad_accum_steps)
    filled = {
        "train_batch_size": config.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.grad_accum_steps,
        "gradient_clipping": config.grad_clip,
    }
    for key, value in filled.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(
                f"{file}: {key}={ds[key]!r} disagrees with the PretrainConfig ({value!r}); "
                'set it to "auto" or remove it'
            )
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(f"{file}: leave 'optimizer'/'scheduler' out; they come from the PretrainConfig")
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": config.lr,
            "betas": [config.adam_beta1, config.adam_beta2],
            "eps": config.adam_eps,
            "weight_decay": config.weight_decay,
            "torch_adam": True,  # torch's AdamW: no JIT-built op, same update as the plain backend
        },
    }
    return ds


class DeepSpeedBackend:
    """A DeepSpeed engine over the model; ZeRO stage and precision come from the json."""

    def __init__(self, model: nn.Module, config: PretrainConfig, ctx: DistContext):
        import deepspeed

        self.model, self.config = model, config
        groups = param_groups(model, config.weight_decay)
        ds_config = deepspeed_config(config.deepspeed, config, ctx.world_size)
        ds_config["optimizer"]["params"].update(
            adamw_kernel([p for group in groups for p in group["params"]])
        )
        with deepspeed_broadcast_of_scalars(model):
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                model_parameters=groups,
                config=ds_config,
                lr_scheduler=lambda optimizer: build_scheduler(optimizer, config),
            )
        self.module: nn.Module = self.engine

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine knows its accumulation boundary

    def backward(self, loss: Tensor, last: bool) -> None:
        """The engine scales by 1 / accumulation steps itself and wants ``step`` after every
        micro-batch; the one at the boundary (the update) is left to ``step``, after the NaN check."""
        self.engine.backward(loss)
        if not last:
            self.engine.step()

    def clip_gradients(self) -> None:
        """DeepSpeed clips inside its step; its norm is known only afterwards."""
        return None

    def step(self) -> Tensor:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else float(norm))

    @torch.no_grad()
    def clamp_temperatures(self) -> None:
        """ZeRO updates its own fp32 master copy and copies it back, so clamping only the model's
        tensor would be undone next step: clamp the master too. The model's values are the same on
        every rank, so all ranks agree on whether to clamp."""
        from deepspeed.utils import safe_set_full_fp32_param

        limit = self.config.max_logit_scale
        for name in TEMPERATURE_NAMES:
            param = getattr(self.model, name, None)
            if param is not None and param.requires_grad and float(param) > limit:
                safe_set_full_fp32_param(param, torch.full_like(param, limit, dtype=torch.float32))
                param.fill_(limit)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False)

    def load(self, checkpoint: Path, trainer_state: dict[str, Any]) -> None:
        path, _ = self.engine.load_checkpoint(
            str(checkpoint / DEEPSPEED_DIR),
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"{checkpoint}: no DeepSpeed engine state under {DEEPSPEED_DIR}/")


def build_backend(
    model: nn.Module, config: PretrainConfig, ctx: DistContext
) -> TorchBackend | DeepSpeedBackend:
    return DeepSpeedBackend(model, config, ctx) if config.deepspeed else TorchBackend(model, config, ctx)
