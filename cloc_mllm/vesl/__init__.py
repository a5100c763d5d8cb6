"""VESL: visually-enriched, scalable labelling of region-text pseudo labels (CLOC paper, Sec. 4).

caption (optional re-captioning) -> noun phrases -> OWLv2 open-vocabulary detection -> WebDataset shards
in the pretraining format (docs/data_formats.md), on one machine (:func:`run_local`) or a Ray
cluster (``vesl.ray_runner``).
"""

from .captioner import HFCaptioner, compose_caption
from .detector import OwlPredictor, RawDetections, Region, RegionDetector, boxes_to_pixels, select_regions
from .manifest import ShardStats
from .phrases import NounPhraseExtractor, SpacyPhraseExtractor, build_phrase_extractor
from .pipeline import Stages, VeslConfig, build_stages, label_shard, run_local
from .sources import WorkUnit, plan_units, read_unit

__all__ = [
    "HFCaptioner",
    "NounPhraseExtractor",
    "OwlPredictor",
    "RawDetections",
    "Region",
    "RegionDetector",
    "ShardStats",
    "SpacyPhraseExtractor",
    "Stages",
    "VeslConfig",
    "WorkUnit",
    "boxes_to_pixels",
    "build_phrase_extractor",
    "build_stages",
    "compose_caption",
    "label_shard",
    "plan_units",
    "read_unit",
    "run_local",
    "select_regions",
]
