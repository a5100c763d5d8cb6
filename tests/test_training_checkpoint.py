import pickle
import random

import numpy as np
import pytest
import torch

from cloc_mllm.training import checkpoint as ckpt


def _save(out, step, keep_last=2, fail=False):
    def write(tmp):
        (tmp / "payload.txt").write_text(str(step))
        if fail:
            raise OSError("disk full")
        ckpt.save_state({"step": step}, tmp / ckpt.TRAINER_STATE)

    return ckpt.save_checkpoint(ckpt.checkpoint_path(out, step), write, True, lambda: None, keep_last)


def test_save_is_atomic_and_keeps_the_last_n(tmp_path):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 8, fail=True)
    # The half-written step 8 never became a checkpoint; the latest is still step 6, intact.
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_00000006"
    assert ckpt.load_state(ckpt.resolve_resume("auto", tmp_path) / ckpt.TRAINER_STATE) == {"step": 6}
    _save(tmp_path, 10)
    assert not list(ckpt.checkpoint_root(tmp_path).glob(".tmp-*"))  # leftovers are cleaned up


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume("", tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing yet: start fresh
    final = _save(tmp_path, 3)
    assert ckpt.resolve_resume(str(final), tmp_path) == final
    with pytest.raises(ValueError, match="not a checkpoint"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
    (final / ckpt.TRAINER_STATE).unlink()
    with pytest.raises(FileNotFoundError, match="trainer_state"):
        ckpt.resolve_resume(str(final), tmp_path)


def test_rng_state_round_trip(tmp_path):
    ckpt.save_state(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "rng.pt"))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_state_files_never_run_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_state(path)
