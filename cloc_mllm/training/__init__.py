"""Pretraining of CLOC encoders (and the CLIP-only baseline): config, data streams, optimiser,
checkpoints and the loop. ``train(PretrainConfig(...))`` is the whole thing from Python."""

from .config import PretrainConfig, parse_args
from .trainer import NonFiniteLossError, train

__all__ = ["NonFiniteLossError", "PretrainConfig", "parse_args", "train"]
