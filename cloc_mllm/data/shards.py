"""A small streaming reader over WebDataset shards (local paths or URLs) of ``KEY.jpg`` + ``KEY.json``.

It works on an explicit, ordered list of shard urls and yields samples in tar order, so splitting
across ranks/workers is "give each its own list" and exact resume is "skip the first N samples"
(``skip`` counts every sample the tars hold, good or bad, so the position does not depend on what
decoded). Undecodable images, bad json and unreadable shards are skipped, counted in ``stats`` and
logged with their key and url. The two stages are public (``raw_records`` then ``decode_sample``) so a
trainer can shuffle or skip raw records before paying for decoding.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import webdataset as wds
from PIL import Image

from cloc_mllm.data.images import annotated_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class ShardSample(NamedTuple):
    key: str
    image: Image.Image  # RGB, fully decoded
    meta: dict  # the KEY.json record (docs/data_formats.md)
    url: str


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard urls from braced patterns ("dir/{000000..000009}.tar"), "::"-joined lists, or local
    directories (all ``*.tar`` inside, sorted)."""
    entries = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for entry in entries:
        path = Path(entry)
        if "://" not in entry and path.is_dir():
            out += sorted(str(p) for p in path.glob("*.tar"))
        else:
            out += wds.shardlists.expand_urls(entry)
    return out


def raw_records(urls: str | Sequence[str], stats: Counter) -> Iterator[dict]:
    """Undecoded ``{"__key__", "__url__", ext: bytes}`` records of ``urls`` in tar order.

    An unreadable or truncated shard loses the rest of its records: counted as ``shard_errors``.
    """

    def on_shard_error(exc: Exception) -> bool:
        stats["shard_errors"] += 1
        logger.warning("shard error, rest of the shard skipped: %r", exc)
        return True  # keep going with the next shard

    shard_list = [{"url": url} for url in expand_urls(urls)]
    yield from wds.tariterators.tarfile_samples(shard_list, handler=on_shard_error)


def decode_sample(raw: dict, stats: Counter) -> ShardSample | None:
    """One raw record -> ``ShardSample``; None (counted and logged) when it cannot be used."""
    key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None or "json" not in raw:
        stats["samples_incomplete"] += 1
        logger.warning("%s: sample %s has no %s; skipped", url, key, "image" if ext is None else "json")
        return None
    try:
        meta = json.loads(raw["json"])
        if not isinstance(meta, dict):
            raise ValueError(f"expected a json object, got {type(meta).__name__}")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        stats["json_invalid"] += 1
        logger.warning("%s: sample %s: bad json (%s); skipped", url, key, exc)
        return None
    try:
        with Image.open(io.BytesIO(raw[ext])) as image:
            # the frame the sample's boxes were drawn on (as evaluation reads it); forces the full
            # decode, so truncated files fail here
            rgb = annotated_rgb(image, (meta.get("width", 0), meta.get("height", 0)))
    except Exception as exc:  # PIL raises many types for corrupt data; any of them means "skip"
        stats["images_undecodable"] += 1
        logger.warning("%s: sample %s: undecodable %s (%s); skipped", url, key, ext, exc)
        return None
    return ShardSample(key, rgb, meta, url)


# Old private name, still imported by cloc_mllm/training/data.py; drop once it imports decode_sample.
_decode = decode_sample


def iter_shard_samples(
    urls: str | Sequence[str], skip: int = 0, stats: Counter | None = None
) -> Iterator[ShardSample]:
    """Decoded samples of ``urls`` (see ``expand_urls``) in order, after skipping the first ``skip``.

    ``stats`` (a Counter, updated in place) gets ``samples_read``, ``samples_skipped_resume`` and one
    counter per kind of loss: ``images_undecodable``, ``json_invalid``, ``samples_incomplete``,
    ``shard_errors`` (an unreadable or truncated tar: the rest of that shard is lost).
    """
    stats = Counter() if stats is None else stats
    for position, raw in enumerate(raw_records(urls, stats)):
        if position < skip:
            stats["samples_skipped_resume"] += 1
            continue
        sample = decode_sample(raw, stats)
        if sample is not None:
            stats["samples_read"] += 1
            yield sample
