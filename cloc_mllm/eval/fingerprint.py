"""Fingerprints that tie a result to the exact model and data it came from.

Weights can be many GB, so a weight file is identified by its size plus hashes of its first and last
MiB (a retrained or re-saved checkpoint changes both); configs and annotation files are hashed whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_EDGE = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def file_digest(path: str | Path, whole: bool = True) -> str:
    """sha256 of the file, or of (size, first MiB, last MiB) when ``whole`` is False."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if whole or size <= 2 * _EDGE:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            digest.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            digest.update(f.read(_EDGE))
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """One hash over the model directory's json files (whole) and weight files (size + edges)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and (path.suffix == ".json" or path.suffix in _WEIGHT_SUFFIXES):
            digest.update(str(path.relative_to(model_dir)).encode())
            digest.update(file_digest(path, whole=path.suffix == ".json").encode())
    return digest.hexdigest()


def data_fingerprints(paths: Iterable[str | Path]) -> dict[str, str]:
    """Whole-file sha256 of each existing annotation file, keyed by path."""
    return {str(p): file_digest(p) for p in sorted({Path(p) for p in paths}) if Path(p).is_file()}


def files_digest(paths: Iterable[str | Path]) -> str:
    """One sha256 over many small files (e.g. a Flickr30k split's xml and txt files), names included."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(file_digest(path).encode())
    return digest.hexdigest()
