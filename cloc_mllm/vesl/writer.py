"""Output shards that appear only when complete.

A shard is written to ``NAME.tar.tmp-PID`` and renamed when closed; its manifest follows the same way.
A shard counts as finished when both ``NAME.tar`` and ``NAME.manifest.json`` exist, so a crash at any
point leaves either nothing or a finished shard, and a re-run redoes exactly the unfinished ones
(removing the temp files a killed process left). A failed write (a full disk) removes its temp file.
Tar members carry fixed metadata (mtime 0), so the same labels always give the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

from cloc_mllm.atomic_io import write_bytes_atomic

MANIFEST_SUFFIX = ".manifest.json"
TOTAL_MANIFEST = "manifest.json"


def shard_paths(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(tar, manifest) paths of shard ``name`` in ``out_dir``."""
    out = Path(out_dir)
    return out / f"{name}.tar", out / f"{name}{MANIFEST_SUFFIX}"


def is_finished(out_dir: str | Path, name: str) -> bool:
    return all(p.is_file() for p in shard_paths(out_dir, name))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Manifests: indented, non-ASCII kept, written whole or not at all."""
    write_bytes_atomic(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def sample_json(caption: str, width: int, height: int, regions: list[dict], source: str) -> bytes:
    """The ``KEY.json`` member, the pretraining record's fields in that order (docs/data_formats.md)."""
    record = {"caption": caption, "width": width, "height": height, "regions": regions, "source": source}
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def iter_shard(path: str | Path) -> Iterator[tuple[str, bytes, dict]]:
    """(key, jpeg bytes, json record) of every sample of a VESL output shard, in order."""
    for sample in wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()):
        yield sample["__key__"], sample["jpg"], json.loads(sample["json"])


def iter_output(out_dir: str | Path) -> Iterator[tuple[str, bytes, dict]]:
    """(key, jpeg bytes, json record) over the finished shards of an output directory, in shard order."""
    for manifest in sorted(Path(out_dir).glob(f"*{MANIFEST_SUFFIX}")):
        yield from iter_shard(manifest.with_name(manifest.name.removesuffix(MANIFEST_SUFFIX) + ".tar"))


class ShardWriter:
    """Context manager writing ``KEY.jpg`` + ``KEY.json`` samples into one tar, renamed in on success."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self.writer: wds.TarWriter | None = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = wds.TarWriter(str(self.tmp), encoder=False, mtime=0)
        return self

    def write(self, key: str, jpeg: bytes, meta: bytes) -> None:
        self.writer.write({"__key__": key, "jpg": jpeg, "json": meta})

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.writer.close()  # flushes: on a full disk this is where the write fails
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def remove_stale_temp(out_dir: str | Path, name: str) -> list[Path]:
    """Delete the temp files of shard ``name`` left by a killed process (another pid's, so no
    writer of this run cleans them) before the shard is redone; returns what was removed."""
    out = Path(out_dir)
    stale = [*out.glob(f"{name}.tar.tmp-*"), *out.glob(f".{name}{MANIFEST_SUFFIX}.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
