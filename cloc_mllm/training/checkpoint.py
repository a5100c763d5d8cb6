"""Checkpoints that are complete or absent: written into a hidden temp dir, then renamed into place.

Layout of ``OUTPUT/checkpoints/step_00000100/``::

    model/                 save_pretrained dir (+ tokenizer, image processor): usable on its own
    pretrain_config.yaml   the PretrainConfig of the run
    trainer_state.pt       step, optimizer, scheduler, data positions and counters (tensors/dicts only)
    rng_rank{R}.pt         each rank's torch / CUDA / python / numpy RNG states
    deepspeed/             the DeepSpeed engine's own checkpoint (DeepSpeed runs only)

Only a renamed (complete) directory counts as a checkpoint, so a process killed mid-save leaves the
previous checkpoint as the latest. Our files are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^step_(\d{8})$")
TRAINER_STATE = "trainer_state.pt"
CONFIG_FILE = "pretrain_config.yaml"
MODEL_DIR = "model"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step_{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp dirs of interrupted saves are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint directory (expected a name like step_00000100)")
    return int(match.group(1))


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """``''`` -> None; ``'auto'`` -> the latest checkpoint of ``output_dir`` (None if there is none);
    a path -> that checkpoint, which must be complete."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    checkpoint_step(path)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path}: no {TRAINER_STATE}; not a complete checkpoint")
    return path


def save_checkpoint(
    final: Path,
    write: Callable[[Path], None],
    is_main: bool,
    barrier: Callable[[], None],
    keep_last: int,
) -> Path:
    """Every rank calls this; ``write(tmp_dir)`` puts this rank's files into the temp dir (the output
    dir must be shared by all ranks). The main rank renames it into place and prunes old ones."""
    tmp = final.with_name(f".tmp-{final.name}")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        write(tmp)
    except Exception as exc:  # a full disk surfaces as OSError, RuntimeError (torch) or SafetensorError
        raise checkpoint_write_error(final, tmp, exc) from exc
    barrier()
    if is_main:
        if final.exists():  # re-saving a step (e.g. a resumed run's last step): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(final.parent.parent, keep_last)
    barrier()
    return final


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (often: the disk is full); the earlier ones are untouched."""


def checkpoint_write_error(final: Path, tmp: Path, exc: Exception) -> CheckpointWriteError:
    """Remove the half-written temp dir (returning its space) and say what is still there."""
    shutil.rmtree(tmp, ignore_errors=True)
    found = list_checkpoints(final.parent.parent)
    kept = (
        f"the latest complete checkpoint is still {found[-1]}" if found else "no checkpoint was written yet"
    )
    free = shutil.disk_usage(final.parent).free / 2**20
    return CheckpointWriteError(
        f"{final}: checkpoint not written ({type(exc).__name__}: {exc}); {free:.1f} MiB free on its disk. "
        f"Nothing earlier was lost: {kept}. Free space, then resume with --resume auto"
    )


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and any leftover temp dirs."""
    root = checkpoint_root(output_dir)
    for leftover in root.glob(".tmp-step_*"):
        shutil.rmtree(leftover, ignore_errors=True)
    doomed = list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path)
        logger.info("deleted old checkpoint %s (keep_last=%d)", path, keep_last)
    return doomed


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A ``torch.save``d dict of tensors and plain containers, loaded without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    torch.save(state, path)


# ---- RNG states ----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and ints (loadable with ``weights_only=True``)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(mt_state, dtype=torch.long),
        "python_version": version,
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "numpy_kind": np_kind,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_kind"],
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(directory: Path, rank: int) -> Path:
    return directory / f"rng_rank{rank}.pt"
