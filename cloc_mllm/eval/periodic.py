"""Periodic evaluation during pretraining on a held-out COCO-format split, through the same encoder
metrics as ``eval/`` (``cloc_mllm.eval.encoder``): region recognition and image-text retrieval.

The trainer does not import this: the pretraining command hands ``periodic_evaluator`` to
``training.train`` (any ``(config, tokenizer, transform) -> (model -> metrics)`` callable will do)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..data.coco import load_coco_captions, load_coco_detection
from ..data.transforms import ImageTransform
from ..modeling_cloc import CLOCModel
from ..training.config import PretrainConfig
from .encoder import image_text_retrieval, region_recognition

logger = logging.getLogger(__name__)


class PeriodicEval:
    """Loads ``root/annotations/{instances,captions}_{split}.json`` (images in ``root/{split}/``) once,
    keeps the first ``max_images`` images, and scores a model on them.

    A CLIP-only model has no trained region head, so its regions are scored the CLIP way
    (``clip_roialign``), as the paper's CLIP baseline is.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        tokenizer: PreTrainedTokenizerBase,
        transform: ImageTransform,
        max_images: int,
    ):
        root = Path(root)
        image_dir = root / split
        stats: Counter = Counter()
        detection = load_coco_detection(root / "annotations" / f"instances_{split}.json", image_dir, stats)
        captions = load_coco_captions(root / "annotations" / f"captions_{split}.json", image_dir, stats)
        self.captions = captions[:max_images]
        kept = {c.image_id for c in self.captions}
        detection.regions = [r for r in detection.regions if r.image_id in kept]
        self.detection, self.tokenizer, self.transform = detection, tokenizer, transform
        if stats:
            logger.warning("eval data %s (%s): skipped %s", root, split, dict(stats))

    def __call__(self, model: CLOCModel) -> dict[str, float]:
        """Flat ``{name: value}`` metrics (percent or fractions as the metric functions give them)."""
        head = "clip_roialign" if model.config.loss_mode != "cloc" else None  # no trained region head
        regions = region_recognition(model, self.tokenizer, self.detection, self.transform, head=head)
        retrieval = image_text_retrieval(model, self.tokenizer, self.captions, self.transform)
        metrics = {"region_mAcc": regions["mAcc"], "region_acc": regions["acc"]}
        metrics.update({k: v for k, v in retrieval.items() if k.startswith(("t2i_", "i2t_"))})
        return {k: float(v) for k, v in metrics.items()}


def periodic_evaluator(
    config: PretrainConfig, tokenizer: PreTrainedTokenizerBase, transform: ImageTransform
) -> PeriodicEval:
    """The pretraining's evaluator from its config (``eval_coco``, ``eval_split``, ``eval_max_images``);
    ``transform`` is the training one, with a centre crop replaced by a resize (a crop would cut
    the boxes being scored)."""
    mode = "resize" if transform.mode == "center_crop" else transform.mode
    return PeriodicEval(
        config.eval_coco, config.eval_split, tokenizer, ImageTransform(transform.processor, mode), config.eval_max_images
    )
