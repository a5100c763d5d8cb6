"""Files that appear whole or not at all: write to a temporary name beside the target, then rename.

A crash mid-write leaves the previous file (or none), never a truncated one; ``os.replace`` is atomic
on one filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
