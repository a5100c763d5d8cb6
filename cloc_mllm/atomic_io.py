"""Files that appear whole or not at all: write to a temporary name beside the target, then rename.

A crash mid-write leaves the previous file (or none), never a truncated one; ``os.replace`` is atomic
on one filesystem. A failed write (a full disk) removes its temp file and names the target.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
    except OSError as exc:  # e.g. a full disk: leave no partial temp file, and name the file
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
