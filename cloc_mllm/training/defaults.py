"""Workable defaults for what a run did not set: the tokenizer, the stream count and the workers.

A first run (``--train-shards one.tar --output-dir out``) should train, not stop three times to ask
for settings the library can work out. What is chosen here is logged in one line, and every reduction
of what was asked for (or defaulted) is a warning, so nothing is decided silently. Explicit settings
that cannot work still raise (see ``trainer.resolve_num_streams``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from ..atomic_io import atomic_output_dir
from ..data.shards import raw_records
from ..data.tokenizer import train_world_tokenizer
from .config import PretrainConfig

logger = logging.getLogger(__name__)

# The HF tokenizers of the CLIP presets (their vocabularies are these tokenizers').
PRESET_TOKENIZERS = {"vit-b-16": "openai/clip-vit-base-patch16", "vit-l-14": "openai/clip-vit-large-patch14"}
WORLD_TOKENIZER_DIR = "tokenizer"  # where ``data.synthetic.write_world`` puts the world's tokenizer
SEARCH_LEVELS = 3  # a world is WORLD/shards/train/*.tar: its tokenizer is two levels above the shards
MAX_TOKENIZER_RECORDS = 20_000  # records read to train a tokenizer (enough texts, bounded time)


def choose_streams(
    config: PretrainConfig, world_size: int, num_urls: int
) -> tuple[PretrainConfig, list[str]]:
    """``config`` with an automatic ``num_streams`` (0) and ``num_workers`` fitted to the shards.

    Auto streams are ranks x workers, cut to the shard count (without ``resample`` a stream needs a
    shard of its own) and to a count that divides the global batch; workers are cut to the streams
    per rank (a worker needs a stream of its own; workers never change what is trained). Returns the
    config and one note per reduction.
    """
    notes = []
    streams = config.num_streams
    if not streams:
        wanted = world_size * max(1, config.num_workers)
        streams = wanted if config.resample else min(wanted, num_urls) // world_size * world_size
        while streams > world_size and config.global_batch_size % (streams * config.grad_accum_steps):
            streams -= world_size
        streams = max(streams, world_size)  # fewer shards than ranks stays an error, raised later
        if streams < wanted:
            notes.append(
                f"num_streams={streams}, not ranks x workers = {wanted}: {num_urls} shard(s), "
                f"global batch {config.global_batch_size}"
            )
    per_rank = streams // world_size
    workers = config.num_workers
    if workers > per_rank:
        notes.append(f"num_workers={per_rank}, not {workers}: only {per_rank} data stream(s) per rank")
        workers = per_rank
    return dataclasses.replace(config, num_streams=streams, num_workers=workers), notes


def world_tokenizer_near(urls: Sequence[str]) -> Path | None:
    """The nearest ``tokenizer/`` directory beside the first local shard or up to three levels above."""
    first = Path(urls[0])
    if "://" in urls[0] or ":" in urls[0].split("/")[0]:  # remote or ``pipe:``: nothing to look beside
        return None
    for directory in [first.parent, *first.parent.parents][: SEARCH_LEVELS + 1]:
        candidate = directory / WORLD_TOKENIZER_DIR
        if (candidate / "tokenizer.json").is_file():
            return candidate
    return None


def shard_texts(urls: Sequence[str], limit: int = MAX_TOKENIZER_RECORDS) -> Iterator[str]:
    """Captions and region phrases of the first ``limit`` records (undecodable json is passed over:
    the training data reader counts it)."""
    for raw in islice(raw_records(list(urls), Counter()), limit):
        try:
            meta = json.loads(raw["json"])
        except (KeyError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        yield str(meta.get("caption", ""))
        for region in meta.get("regions") or []:
            if isinstance(region, dict):
                yield str(region.get("phrase", ""))


def choose_tokenizer(
    config: PretrainConfig,
    urls: Sequence[str],
    is_main: bool,
    barrier: Callable[[], None],
    resumed: str = "",
) -> tuple[PretrainConfig, str]:
    """``config`` with a tokenizer, and where it came from; the first match wins: the one given; the
    resumed checkpoint's (``resumed``); the ``init_from_clip`` checkpoint's own; a world's
    ``tokenizer/`` beside the shards; the CLIP preset's hub tokenizer; else one trained on the shards'
    texts (the world recipe at the tiny preset's vocabulary size) into ``OUTPUT/tokenizer``: rank 0
    trains it while the others wait, and a relaunch before the first checkpoint reuses it.
    """
    if config.tokenizer:
        return config, "given"
    if resumed:
        return dataclasses.replace(config, tokenizer=resumed), "the resumed checkpoint's"
    if config.init_from_clip:
        return dataclasses.replace(config, tokenizer=config.init_from_clip), "the init_from_clip checkpoint's"
    found = world_tokenizer_near(urls)
    if found is not None:
        return dataclasses.replace(config, tokenizer=str(found)), "the world's, beside the shards"
    if config.preset in PRESET_TOKENIZERS:
        return dataclasses.replace(config, tokenizer=PRESET_TOKENIZERS[config.preset]), "the preset's"
    out = Path(config.output_dir) / WORLD_TOKENIZER_DIR
    how = "trained on the shards' texts by an earlier launch of this run"
    if is_main and not (out / "tokenizer.json").is_file():
        how = "trained on the shards' texts"
        with atomic_output_dir(out) as tmp:  # a run killed here leaves no half tokenizer to reuse
            train_world_tokenizer(shard_texts(urls), tmp)
    barrier()  # every rank, always: only rank 0 may look before the tokenizer is there
    return dataclasses.replace(config, tokenizer=str(out)), how
