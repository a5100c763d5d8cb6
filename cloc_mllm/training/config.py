"""``PretrainConfig``: every knob of a pretraining run in one dataclass.

A run is described by a YAML/JSON file and/or command-line flags (flags win); the resolved config is
saved next to the run and inside every checkpoint, so a resumed run can be checked against it.
Defaults are the paper's recipe (AdamW 0.9/0.98, lr 5e-4 cosine, 2k warmup, weight decay 0.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloc_mllm.atomic_io import write_text_atomic
from cloc_mllm.configuration_cloc import LOSS_MODES, TRAINED_REGION_HEADS

CHOICES = {
    "loss": LOSS_MODES,
    "region_head": TRAINED_REGION_HEADS,
    "precision": ("auto", "bf16", "fp32"),
    "device": ("auto", "cpu", "cuda"),
    "image_mode": ("resize", "pad", "center_crop"),
}

# Fields a resumed run may change freely: they do not alter what is trained, on which samples, or how.
RUNTIME_FIELDS = frozenset(
    {
        "output_dir",
        "resume",
        "allow_config_change",
        "device",
        "deterministic",
        "num_workers",
        "log_every",
        "save_every",
        "keep_last",
        "eval_coco",
        "eval_split",
        "eval_every",
        "eval_max_images",
        "export_vision_tower",
    }
)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class PretrainConfig:
    """One pretraining run. ``global_batch_size`` is the contrastive batch summed over ranks and
    accumulation steps, so the same config trains the same model on 1 or N processes."""

    # ---- model ----
    preset: str = field(default="tiny", metadata=_help("CLOCConfig preset: tiny, vit-b-16, vit-l-14."))
    model_overrides: dict = field(
        default_factory=dict,
        metadata=_help("CLOCConfig fields over the preset (JSON on the command line), nested dicts merged."),
    )
    init_from_clip: str = field(
        default="", metadata=_help("HF CLIPModel dir/id to start from (continued pretraining).")
    )
    loss: str = field(default="cloc", metadata=_help(
        "cloc = CLIP + region + grounding; clip = baseline; clip_phrases = CLIP with the region phrases as "
        "extra texts of their whole image (the equal-supervision control)."
    ))
    region_head: str = field(default="prompter", metadata=_help("prompter (CLOC) or roialign (ablation)."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations."))
    # ---- data ----
    train_shards: str = field(default="", metadata=_help("WebDataset urls: 'dir/{000000..000009}.tar'."))
    tokenizer: str = field(
        default="",
        metadata=_help(
            "HF tokenizer dir or id ('' = the init_from_clip checkpoint's, a world's tokenizer/ beside the "
            "shards, the CLIP preset's, or one trained on the shards' texts into OUTPUT/tokenizer)."
        ),
    )
    max_regions: int = field(default=4, metadata=_help("Regions sampled per image (M)."))
    max_text_length: int = field(default=77, metadata=_help("Caption tokens (capped by the text tower)."))
    region_max_text_length: int = field(default=32, metadata=_help("Region phrase tokens."))
    image_mode: str = field(default="resize", metadata=_help("resize, pad or center_crop."))
    shuffle_buffer: int = field(default=1000, metadata=_help("Samples in each stream's shuffle buffer."))
    resample: bool = field(default=False, metadata=_help("Draw shards with replacement (no epochs)."))
    num_streams: int = field(
        default=0,
        metadata=_help(
            "Independent data streams (0 = ranks x workers at the first launch, cut to the shards and "
            "to a divisor of the batch); fixed per run."
        ),
    )
    num_workers: int = field(
        default=2,
        metadata=_help("DataLoader worker processes per rank (cut to its streams, with a warning)."),
    )
    # ---- optimisation ----
    global_batch_size: int = field(default=32, metadata=_help("Images per optimiser step, all ranks."))
    grad_accum_steps: int = field(default=1, metadata=_help("Micro-batches per optimiser step."))
    max_steps: int = field(default=1000, metadata=_help("Optimiser steps."))
    lr: float = field(default=5e-4, metadata=_help("Peak learning rate."))
    min_lr: float = field(default=0.0, metadata=_help("Learning rate at the end of the cosine."))
    warmup_steps: int = field(default=2000, metadata=_help("Linear warmup steps."))
    weight_decay: float = field(default=0.2, metadata=_help("AdamW decay on matrices (not 1-D params)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.98, metadata=_help("AdamW beta2."))
    adam_eps: float = field(default=1e-6, metadata=_help("AdamW epsilon."))
    grad_clip: float = field(default=1.0, metadata=_help("Max global gradient norm (0 = off)."))
    max_logit_scale: float = field(default=math.log(100.0), metadata=_help("Clamp of log temperatures."))
    # ---- runtime ----
    output_dir: str = field(default="", metadata=_help("Run directory (checkpoints, logs, config)."))
    seed: int = field(default=0, metadata=_help("Seed of the model init and the data order."))
    precision: str = field(
        default="auto", metadata=_help("auto (bf16 autocast where supported), bf16, fp32.")
    )
    device: str = field(default="auto", metadata=_help("auto, cpu or cuda."))
    deterministic: bool = field(default=False, metadata=_help("torch.use_deterministic_algorithms."))
    deepspeed: str = field(default="", metadata=_help("DeepSpeed json (ZeRO-1/2); empty = plain DDP."))
    log_every: int = field(default=10, metadata=_help("Steps between logged scalars (0 = only the last)."))
    save_every: int = field(default=500, metadata=_help("Steps between checkpoints (0 = only the last)."))
    keep_last: int = field(default=3, metadata=_help("Checkpoints kept (older ones deleted)."))
    eval_coco: str = field(
        default="", metadata=_help("COCO-format dir (annotations/, images) for periodic evaluation.")
    )
    eval_split: str = field(default="val", metadata=_help("Split name of the eval json/images."))
    eval_every: int = field(default=0, metadata=_help("Steps between evaluations (0 = off)."))
    eval_max_images: int = field(default=200, metadata=_help("Images used per evaluation."))
    resume: str = field(default="", metadata=_help("'auto' (latest in output_dir), a checkpoint dir, or ''."))
    allow_config_change: bool = field(default=False, metadata=_help("Resume even if the config changed."))
    export_vision_tower: bool = field(
        default=False, metadata=_help("Write output_dir/vision_tower at the end.")
    )

    def validate(self) -> PretrainConfig:
        """Raise a ValueError naming the field for anything a run cannot start with."""
        for name in ("train_shards", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"PretrainConfig.{name} is required")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"PretrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("global_batch_size", "grad_accum_steps", "max_steps", "max_regions", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "num_streams",
            "num_workers",
            "warmup_steps",
            "shuffle_buffer",
            "log_every",
            "save_every",
            "eval_every",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"PretrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_every and not self.eval_coco:
            raise ValueError("PretrainConfig.eval_every needs eval_coco (a COCO-format directory)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write as YAML atomically (the run's record of what it was asked to do)."""
        path = Path(path)
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> PretrainConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown PretrainConfig field(s) {unknown}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> PretrainConfig:
        """Load a ``.yaml``/``.yml``/``.json`` file; ``overrides`` replace its fields."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: expected a mapping of PretrainConfig fields, got {type(values).__name__}"
            )
        return cls.from_dict({**values, **overrides}, source=str(path))

    def changed_fields(self, other: PretrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (outside ``RUNTIME_FIELDS``) where ``other`` differs: name -> (other's, self's)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (theirs[k], mine[k]) for k in mine if k not in RUNTIME_FIELDS and mine[k] != theirs[k]}


# ---- command line ---------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _parse_dict(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """``--config FILE`` plus one ``--field-name`` flag per field; only flags given override the file."""
    parser = argparse.ArgumentParser(
        description="Pretrain a CLOC (or CLIP-only baseline) encoder.", argument_default=argparse.SUPPRESS
    )
    parser.add_argument("--config", help="YAML/JSON file of PretrainConfig fields (flags override it).")
    # The deepspeed launcher passes --local_rank; the rank is read from the environment instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        kind = hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        if kind is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif kind is dict:
            kwargs.update(type=_parse_dict, metavar="JSON")
        else:
            kwargs.update(type=kind)
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    """The config of ``--config FILE`` (if any) with every flag given on the command line applied."""
    args = vars(build_parser().parse_args(argv))
    args.pop("local_rank", None)
    path = args.pop("config", None)
    config = PretrainConfig.from_file(path, **args) if path else PretrainConfig.from_dict(args)
    return config.validate()
