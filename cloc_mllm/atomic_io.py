"""Outputs that appear whole or not at all: written under a temporary name beside the target, then
renamed into place (``os.replace`` is atomic on one filesystem).

A crash mid-write leaves the previous file or directory (or none), never a truncated one; a failed
write (a full disk) removes its temporary copy and names the target. The one place this is done:
files by bytes or text, files written by another library (``atomic_path``: a plot, a safetensors
file, a hard link) and whole directories (``atomic_output_dir``). Pretraining checkpoints add rank
barriers around the same rename (``training.checkpoint``); streamed shards rename when closed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that go by it still work);
    on success it replaces ``path``, on any error it is removed and an OSError names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except OSError as exc:  # e.g. a full disk: leave no partial temp file, and name the file
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a sibling temp dir to write into; on success it replaces ``out_dir``, on error it is removed."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
