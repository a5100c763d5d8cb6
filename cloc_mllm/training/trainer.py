"""The pretraining loop: ``train(PretrainConfig) -> final checkpoint dir``, on one process, under
torchrun (DDP) or under the deepspeed launcher, fresh or resumed.

One optimiser step = ``grad_accum_steps`` micro-batches; each micro-batch's contrastive losses are
over that micro-batch gathered across ranks. A non-finite loss or gradient stops the run before the
update, so the newest checkpoint on disk is always a good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from cloc_mllm.atomic_io import atomic_output_dir

from ..data.collate import CLOCCollator
from ..data.shards import expand_urls
from ..data.tokenizer import load_tokenizer
from ..data.transforms import ImageTransform
from ..modeling_cloc import CLOCModel
from . import checkpoint as ckpt
from .backend import build_backend
from .config import PretrainConfig
from .data import MicroBatches, StreamDataset, rank_streams
from .defaults import choose_streams, choose_tokenizer
from .distributed import DistContext, all_reduce_sum, autocast_dtype, init_distributed, shutdown, sum_counters
from .model import build_model, freeze_unused_parameters, load_model_weights
from .monitor import RunMonitor
from .optim import temperatures

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "loss_clip", "loss_region", "loss_ground", "region_weight")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became inf/nan; no update was applied."""


# (config, tokenizer, eval transform) -> (model -> {metric: value}); e.g. eval.periodic.periodic_evaluator
EvaluatorFactory = Callable[[PretrainConfig, PreTrainedTokenizerBase, ImageTransform], Callable[[CLOCModel], dict]]


def train(config: PretrainConfig, make_evaluator: EvaluatorFactory | None = None) -> Path:
    """Train (or resume, per ``config.resume``) and return the final checkpoint directory.

    ``make_evaluator`` builds the periodic evaluation of ``config.eval_every`` (on rank 0); the
    pretraining command passes ``cloc_mllm.eval.periodic.periodic_evaluator``.
    """
    config.validate()
    if config.eval_every and make_evaluator is None:
        raise ValueError(
            "PretrainConfig.eval_every needs an evaluator: train(config, make_evaluator=...), e.g. "
            "cloc_mllm.eval.periodic.periodic_evaluator (the pretraining command passes it)"
        )
    ctx = init_distributed(config.device, deepspeed=bool(config.deepspeed))
    try:
        return Trainer(config, ctx, make_evaluator).fit()
    finally:
        shutdown(ctx)


def resolve_num_streams(config: PretrainConfig, world_size: int, num_urls: int) -> int:
    """The run's stream count (auto = ranks x workers) after checking it splits evenly."""
    streams = config.num_streams or world_size * max(1, config.num_workers)
    per_rank = streams // world_size
    if streams % world_size or per_rank < max(1, config.num_workers):
        raise ValueError(
            f"num_streams={streams} must be a multiple of the {world_size} rank(s) with at least "
            f"num_workers={config.num_workers} streams per rank"
        )
    if not config.resample and streams > num_urls:
        raise ValueError(
            f"num_streams={streams} exceeds the {num_urls} shard(s); add shards or use --resample"
        )
    if config.global_batch_size % (streams * config.grad_accum_steps):
        raise ValueError(
            f"global_batch_size={config.global_batch_size} must be divisible by num_streams x "
            f"grad_accum_steps = {streams} x {config.grad_accum_steps}: every micro-batch takes as many "
            "samples from each stream"
        )
    return streams


def resolve_defaults(
    config: PretrainConfig, ctx: DistContext, urls: list[str], resumed_tokenizer: str = ""
) -> PretrainConfig:
    """The tokenizer, streams and workers filled in or fitted (``defaults``), checked, and logged in
    one line; each reduction of what was asked for is also a warning."""
    config, notes = choose_streams(config, ctx.world_size, len(urls))
    for note in notes:
        logger.warning("%s (set --num-streams/--num-workers to choose)", note)
    config, source = choose_tokenizer(config, urls, ctx.is_main, ctx.barrier, resumed_tokenizer)
    config = dataclasses.replace(config, num_streams=resolve_num_streams(config, ctx.world_size, len(urls)))
    if ctx.is_main:
        logger.info(
            "data: %d shard(s), %d rank(s): num_streams=%d, num_workers=%d per rank; tokenizer %s (%s)",
            len(urls),
            ctx.world_size,
            config.num_streams,
            config.num_workers,
            config.tokenizer,
            source,
        )
    return config


class Trainer:
    def __init__(self, config: PretrainConfig, ctx: DistContext, make_evaluator: EvaluatorFactory | None = None):
        self.ctx = ctx
        urls = expand_urls(config.train_shards)
        if not urls:
            raise FileNotFoundError(f"train_shards={config.train_shards!r} names no shard")
        self.resume_from = ckpt.resolve_resume(config.resume, config.output_dir)
        saved = ckpt_config(self.resume_from) if self.resume_from else None
        if saved is not None and config.num_streams == 0:
            config = dataclasses.replace(config, num_streams=saved.num_streams)
        config = resolve_defaults(config, ctx, urls, saved.tokenizer if saved is not None else "")
        if saved is not None:
            check_config_change(config, saved, self.resume_from)
        self.config, self.out = config, Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            config.save(self.out / "config.yaml")
        seed_everything(config.seed, config.deterministic)

        self.tokenizer = load_tokenizer(config.tokenizer)
        self.model = build_model(config, self.tokenizer).to(ctx.device)
        if config.gradient_checkpointing:
            self.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        if self.resume_from is not None:
            load_model_weights(self.model, self.resume_from / ckpt.MODEL_DIR)
        self.frozen = freeze_unused_parameters(self.model)
        self.backend = build_backend(self.model, config, ctx)
        self.autocast = autocast_dtype(config.precision, ctx.device)
        self.transform = ImageTransform.from_size(
            self.model.config.vision_config.image_size, mode=config.image_mode
        )

        self.step, positions, stats = 0, torch.zeros(config.num_streams, 2, dtype=torch.long), Counter()
        if self.resume_from is not None:
            state = ckpt.load_state(self.resume_from / ckpt.TRAINER_STATE)
            self.backend.load(self.resume_from, state)
            self.step, positions = int(state["step"]), state["data"]["positions"]
            stats = Counter(state["data"]["stats"]) if ctx.is_main else Counter()
            self._restore_rng()
            logger.info("resumed from %s at step %d", self.resume_from, self.step)
        self.data = self._build_data(urls, positions)
        self.data.stats.update(stats)
        self.evaluator = (
            make_evaluator(config, self.tokenizer, self.transform)
            if config.eval_every and make_evaluator is not None and ctx.is_main
            else None
        )

    # ---- set-up ---------------------------------------------------------------------------------
    def _build_data(self, urls: list[str], positions: Tensor) -> MicroBatches:
        config, text = self.config, self.model.config.text_config
        collator = CLOCCollator(
            self.tokenizer,
            self.transform,
            max_regions=config.max_regions,
            max_length=min(config.max_text_length, text.max_position_embeddings),
            region_max_length=min(config.region_max_text_length, text.max_position_embeddings),
            seed=config.seed,
        )
        dataset = StreamDataset(
            urls,
            rank_streams(config.num_streams, self.ctx.rank, self.ctx.world_size),
            config.num_streams,
            positions,
            config.global_batch_size // (config.num_streams * config.grad_accum_steps),
            collator,
            config.seed,
            config.shuffle_buffer,
            config.resample,
        )
        return MicroBatches(dataset, config.num_workers, pin_memory=self.ctx.device.type == "cuda")

    def _restore_rng(self) -> None:
        path = ckpt.rng_file(self.resume_from, self.ctx.rank)
        if path.is_file():
            ckpt.set_rng_state(ckpt.load_state(path))
        else:  # e.g. resumed on more ranks than saved: the new ranks start from the seed
            logger.warning(
                "%s: no RNG state for rank %d; keeping the seeded one", self.resume_from, self.ctx.rank
            )

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> Path:
        config = self.config
        monitor = RunMonitor(self.out, self.step, config.max_steps, self.ctx.is_main)
        batches = iter(self.data)
        last_saved = self.resume_from
        train_time, timed_steps = 0.0, 0  # samples/s counts training steps only, not eval or saving
        try:
            while self.step < config.max_steps:
                start = time.perf_counter()
                terms = self._accumulate(batches)
                norm = self.backend.clip_gradients()
                self._check_finite(terms, norm, last_saved)
                norm = self.backend.step()
                self.backend.clamp_temperatures()
                self.step += 1
                train_time, timed_steps = train_time + time.perf_counter() - start, timed_steps + 1
                monitor.advance()
                if self._due(config.log_every):
                    self._log(monitor, terms, norm, timed_steps * config.global_batch_size / train_time)
                    train_time, timed_steps = 0.0, 0
                if config.eval_every and self._due(config.eval_every):
                    self._evaluate(monitor)
                if self._due(config.save_every):
                    last_saved = self.save()
        finally:
            monitor.close()
        if last_saved is None or ckpt.checkpoint_step(last_saved) != self.step:
            last_saved = self.save()
        if config.export_vision_tower and self.ctx.is_main:
            export_vision_tower(self.model, self.out / "vision_tower")
        self.ctx.barrier()
        return last_saved

    def _due(self, every: int) -> bool:
        """Periodic work happens every ``every`` steps (0 = never) and always at the last step."""
        return self.step == self.config.max_steps or (every > 0 and self.step % every == 0)

    def _accumulate(self, batches) -> Tensor:
        """Forward/backward every micro-batch of one step; (5,) loss terms summed over them."""
        sums = torch.zeros(len(LOSS_TERMS), device=self.ctx.device)
        accum = self.config.grad_accum_steps
        for micro in range(accum):
            batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in next(batches).items()}
            last = micro == accum - 1
            with self.backend.micro_step(last):
                with self._autocast():
                    out = self.backend.module(**batch, return_loss=True)
                self.backend.backward(out.loss, last)
            values = [getattr(out, name) for name in LOSS_TERMS]
            sums += torch.stack([v.detach().float() if v is not None else sums.new_zeros(()) for v in values])
        return sums

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast)

    def _check_finite(self, terms: Tensor, norm: Tensor | None, last_saved: Path | None) -> None:
        """Stop every rank together, before any update, if any rank saw inf/nan."""
        ok = torch.isfinite(terms).all() & (torch.isfinite(norm) if norm is not None else True)
        bad = all_reduce_sum((~ok).float().reshape(1).to(self.ctx.device))
        if bad.item() == 0:
            return
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_TERMS, terms.tolist()))
        where = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"step {self.step + 1}: non-finite loss or gradient on {int(bad.item())} rank(s) "
            f"(this rank: {values}, grad_norm={float(norm) if norm is not None else 'n/a'}). Training "
            f"stopped before the update; {where}. Lower the lr or check the data, then resume."
        )

    def _log(self, monitor: RunMonitor, terms: Tensor, norm: Tensor, samples_per_s: float) -> None:
        world, accum = self.ctx.world_size, self.config.grad_accum_steps
        means = (all_reduce_sum(terms.clone()) / (world * accum)).tolist()
        stats = sum_counters(self.data.stats)
        values = {f"train/{n}": v for n, v in zip(LOSS_TERMS, means)}
        for name, value in temperatures(self.model).items():
            values[f"train/{name}"] = value
            values[f"train/{name.replace('logit_scale', 'temperature')}"] = float(np.exp(-value))
        values.update(
            {
                "train/lr": self.backend.lr(),
                "train/grad_norm": float(norm),
                "train/samples_per_s": samples_per_s,
            }
        )
        values.update({f"data/{k}": float(v) for k, v in sorted(stats.items())})
        monitor.scalars(self.step, values)
        monitor.message(
            f"step {self.step}: loss {means[0]:.4f} (clip {means[1]:.4f}, region {means[2]:.4f}, "
            f"ground {means[3]:.4f}) lr {self.backend.lr():.3g} {samples_per_s:.1f} samples/s"
        )

    def _evaluate(self, monitor: RunMonitor) -> None:
        if self.evaluator is not None:
            metrics = self.evaluator(self.model)
            monitor.scalars(self.step, {f"eval/{k}": v for k, v in metrics.items()})
            monitor.message(
                f"step {self.step} eval: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            )
        self.ctx.barrier()

    # ---- checkpoints ----------------------------------------------------------------------------
    def _global_positions(self) -> Tensor:
        """Every stream's position: each rank contributes the rows of the streams it owns."""
        mine = rank_streams(self.config.num_streams, self.ctx.rank, self.ctx.world_size)
        table = torch.zeros_like(self.data.positions)
        table[mine] = self.data.positions[mine]
        return all_reduce_sum(table.to(self.ctx.device)).cpu()

    def save(self) -> Path:
        positions, stats = self._global_positions(), sum_counters(self.data.stats)

        def write(tmp: Path) -> None:
            if self.ctx.is_main:
                model_dir = tmp / ckpt.MODEL_DIR
                self.model.save_pretrained(model_dir, safe_serialization=True)
                self.tokenizer.save_pretrained(model_dir)
                self.transform.processor.save_pretrained(model_dir)
                self.config.save(tmp / ckpt.CONFIG_FILE)
                state = {
                    "step": self.step,
                    **self.backend.state_dict(),
                    "data": {
                        "positions": positions,
                        "num_streams": self.config.num_streams,
                        "stats": dict(stats),
                    },
                }
                ckpt.save_state(state, tmp / ckpt.TRAINER_STATE)
            ckpt.save_state(ckpt.rng_state(), ckpt.rng_file(tmp, self.ctx.rank))
            self.backend.save(tmp)

        final = ckpt.checkpoint_path(self.out, self.step)
        return ckpt.save_checkpoint(final, write, self.ctx.is_main, self.ctx.barrier, self.config.keep_last)


# ---- helpers -------------------------------------------------------------------------------------


def ckpt_config(checkpoint: Path) -> PretrainConfig:
    return PretrainConfig.from_file(checkpoint / ckpt.CONFIG_FILE)


def check_config_change(config: PretrainConfig, saved: PretrainConfig, checkpoint: Path) -> None:
    """Refuse to resume under a different recipe unless ``allow_config_change``."""
    changes = config.changed_fields(saved)
    if not changes:
        return
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    if not config.allow_config_change:
        raise ValueError(
            f"{checkpoint}: the config differs from the one this checkpoint was trained with ({listed}); "
            "pass --allow-config-change to resume anyway"
        )
    logger.warning("%s: resuming with a changed config (%s)", checkpoint, listed)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def export_vision_tower(model, directory: Path) -> None:
    """The drop-in ``CLIPVisionModel`` dir, written aside and renamed into place."""
    with atomic_output_dir(directory) as tmp:
        model.export_vision_tower(tmp)
