"""Faults injected for real (issue 27; the table is docs/faults.md): SIGKILL to real processes at a
chosen point, a size-limited disk, and for each one what must survive and what a re-run finishes.

A process is stopped at its critical point by a hook that writes the process id to a marker file and
then waits, so the test kills it at exactly that point (no sleeps, no races). The full disk is a
small tmpfs where this machine lets the test mount one, else the writes raise ENOSPC (``SmallDisk``).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from transformers import LlavaForConditionalGeneration

from cloc_mllm.data.shards import expand_urls
from cloc_mllm.eval.cache import PredictionCache
from cloc_mllm.modeling_cloc import CLOCModel
from cloc_mllm.training import checkpoint as ckpt
from cloc_mllm.training.distributed import free_port
from cloc_mllm.training.trainer import train
from cloc_mllm.vesl import writer as vesl_writer
from cloc_mllm.vesl.pipeline import VeslConfig, run_local
from cloc_mllm.vesl.writer import iter_output, read_json

from .pretrain_utils import REPO, run_train_script, script_env, tiny_config, tiny_world, write_config
from .test_mllm_training import _args, world  # noqa: F401  (world: the tiny LLaVA fixture)
from .test_vesl_pipeline import FakeDetector, encoded, fake_stages, sample, write_input

# Imported by the scripts below: stops the calling process at a chosen point until the test kills it.
PAUSE = """
import os, sys, time
def pause_here(marker):
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(600)
"""


def start(script: str, *args: str | Path, cwd: Path = REPO) -> subprocess.Popen:
    """``python -c PAUSE+script args`` with the repo importable; its output goes to ``args[0].log``
    (the first argument is the marker path)."""
    log = open(Path(str(args[0]) + ".log"), "w")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-c", PAUSE + script, *map(str, args)],
        env=script_env(),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def kill_at_marker(proc: subprocess.Popen, marker: Path, timeout: float = 180) -> None:
    """Wait until the process reports its pause point, then SIGKILL the pid it wrote there."""
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if proc.poll() is not None:
            log = Path(str(marker) + ".log")
            raise AssertionError(
                f"ended ({proc.returncode}) before the pause point:\n{log.read_text()[-3000:]}"
            )
        assert time.monotonic() < deadline, "pause point not reached in time"
        time.sleep(0.02)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    proc.wait(timeout=60)


# ---- a size-limited disk --------------------------------------------------------------------------


class SmallDisk:
    """A directory that can be filled: a ``size``-limited tmpfs (route ``tmpfs``), or, where mounting
    is not allowed, a plain directory whose named writers raise ENOSPC while full (route ``injected``)."""

    def __init__(self, path: Path, size: str, monkeypatch: pytest.MonkeyPatch):
        self.path, self.monkeypatch, self.full = path, monkeypatch, False
        path.mkdir()
        mounted = False
        if not os.environ.get("CLOC_FAULTS_NO_MOUNT"):  # set it to run the fallback route here
            mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
            mounted = subprocess.run(mount, capture_output=True).returncode == 0
        self.route = "tmpfs" if mounted else "injected"
        self.filler = path / "filler"

    def fill(self, leave: int = 0, writers: Sequence[tuple[object, str]] = ()) -> None:
        """Leave ``leave`` bytes free (tmpfs), or make each ``(object, name)`` writer raise ENOSPC."""
        if self.route == "tmpfs":
            with open(self.filler, "wb") as f:  # (re)filling starts from an empty filler
                stat = os.statvfs(self.path)
                free = stat.f_bavail * stat.f_frsize
                try:
                    f.write(b"\0" * max(0, free - leave))
                    f.flush()
                except OSError as exc:  # page rounding can make the last bytes not fit
                    assert exc.errno == errno.ENOSPC
            return
        if self.full:
            return
        self.full = True
        for owner, name in writers:
            real = getattr(owner, name)

            def full_disk(*args, _real=real, **kwargs):
                if self.full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return _real(*args, **kwargs)

            self.monkeypatch.setattr(owner, name, full_disk)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.full = False

    def close(self) -> None:
        if self.route == "tmpfs":
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path, monkeypatch, record_property):
    disk = SmallDisk(tmp_path / "disk", "8m", monkeypatch)
    record_property("full_disk_route", disk.route)
    print(f"full-disk route: {disk.route}")
    yield disk
    disk.close()


# ---- pretraining checkpoints ----------------------------------------------------------------------

PRETRAIN_PAUSED_IN_CHECKPOINT = """
from cloc_mllm.training import checkpoint as ckpt
from cloc_mllm.pretraining import main
marker, step = sys.argv[1], int(sys.argv[2])
real_save_state = ckpt.save_state
def save_state(state, path):
    real_save_state(state, path)
    if f".tmp-step_{step:08d}" in str(path):  # inside checkpoint `step`, part of it written
        pause_here(marker)
ckpt.save_state = save_state
sys.exit(main(sys.argv[3:]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path_factory, tmp_path):
    shards = tiny_world(tmp_path_factory)
    out = tmp_path / "run"
    config = write_config(
        tiny_config(shards, out, max_steps=3, save_every=1, keep_last=1), tmp_path / "run.yaml"
    )
    marker = tmp_path / "paused"
    kill_at_marker(start(PRETRAIN_PAUSED_IN_CHECKPOINT, marker, 2, "--config", config), marker)

    partial = ckpt.checkpoint_root(out) / ".tmp-step_00000002"
    assert (partial / ckpt.TRAINER_STATE).is_file()  # killed with checkpoint 2 half written
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000001"]  # kept despite keep_last=1
    latest = ckpt.resolve_resume("auto", out)
    assert latest.name == "step_00000001"  # the partial one is never picked up
    assert ckpt.load_state(latest / ckpt.TRAINER_STATE)["step"] == 1
    CLOCModel.from_pretrained(latest / ckpt.MODEL_DIR)

    run_train_script(["--config", str(config), "--resume", "auto"])
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000003"]
    assert not partial.exists()


def test_a_full_disk_while_checkpointing_loses_nothing(tmp_path_factory, small_disk, monkeypatch):
    shards = tiny_world(tmp_path_factory)
    out = small_disk.path / "run"
    config = tiny_config(shards, out, max_steps=2, save_every=1, keep_last=1, resume="auto")
    real_save = ckpt.save_checkpoint

    def save_then_fill(final, *args, **kwargs):  # the disk fills up right after checkpoint 1
        saved = real_save(final, *args, **kwargs)
        if ckpt.checkpoint_step(final) == 1:
            small_disk.fill(leave=256 * 1024, writers=[(ckpt, "save_state")])
        return saved

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_fill)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"step_00000002: checkpoint not written") as raised:
        train(config)
    assert "Nothing earlier was lost: the latest complete checkpoint is still" in str(raised.value)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000001"]
    assert not list(ckpt.checkpoint_root(out).glob(".tmp-*"))  # the partial write gave its space back
    CLOCModel.from_pretrained(ckpt.checkpoint_path(out, 1) / ckpt.MODEL_DIR)

    small_disk.free()
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert train(config) == ckpt.checkpoint_path(out, 2)  # resumed from 1, finished
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_00000002"]


# ---- VESL shards ----------------------------------------------------------------------------------


@pytest.fixture
def vesl_input(tmp_path):
    """Three input shards; the middle one's caption names a 'green star' (where faults are injected)."""
    captions = ("a red square on a table", "a green star", "a blue circle")
    for i, caption in enumerate(captions):
        write_input(
            tmp_path / "in" / f"00{i}.tar",
            [
                sample(f"k{i}{j}", encoded("JPEG", colour), caption)
                for j, colour in enumerate(("red", "blue"))
            ],
        )
    return str(tmp_path / "in" / "{000..002}.tar")


def vesl_config(vesl_input, out) -> VeslConfig:
    return VeslConfig(input=vesl_input, output=str(out), batch_size=1)


def reference_output(vesl_input, directory):
    """What an uninterrupted run writes."""
    run_local(vesl_config(vesl_input, directory), stages=fake_stages())
    return list(iter_output(directory))


VESL_PAUSED_MID_SHARD = """
from cloc_mllm.vesl.pipeline import VeslConfig, run_local
from tests.test_vesl_pipeline import FakeDetector, fake_stages
marker, source, out = sys.argv[1:4]
class PausingDetector(FakeDetector):
    def __call__(self, images, phrases):
        if self.images == 3:  # shard 000000 done, the first image of 000001 written
            pause_here(marker)
        return super().__call__(images, phrases)
stages = fake_stages()
stages.detector = PausingDetector()
run_local(VeslConfig(input=source, output=out, batch_size=1), stages=stages)  # as vesl_config
"""


def test_vesl_killed_mid_shard_leaves_no_partial_shard_and_the_rerun_does_the_rest(vesl_input, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    kill_at_marker(start(VESL_PAUSED_MID_SHARD, marker, vesl_input, out), marker)

    assert vesl_writer.is_finished(out, "000000")
    assert list(out.glob("000001.tar.tmp-*"))  # killed with shard 000001 half written...
    assert expand_urls(str(out)) == [str(out / "000000.tar")]  # ...where no reader sees it
    assert [key for key, _, _ in iter_output(out)] == ["k00", "k01"]

    stages = fake_stages()
    summary = run_local(vesl_config(vesl_input, out), stages=stages)
    assert stages.detector.images == 4  # shards 000001 and 000002 only
    assert summary["finished"] == 3 and not list(out.glob("*tmp*"))  # the stale temp file is gone
    assert list(iter_output(out)) == reference_output(vesl_input, tmp_path / "reference")


def test_a_full_disk_while_writing_a_vesl_shard(vesl_input, tmp_path, small_disk):
    out = small_disk.path / "out"
    config = vesl_config(vesl_input, out)

    class FillingDetector(FakeDetector):
        def __call__(self, images, phrases):
            if any("green" in p for queries in phrases for p in queries):  # while shard 000001 is written
                small_disk.fill(writers=[(vesl_writer.ShardWriter, "write")])
            return super().__call__(images, phrases)

    stages = fake_stages()
    stages.detector = FillingDetector()
    # tmpfs: the run's manifest.json cannot be written either (OSError naming it); injected: only the
    # shard writes fail, and the run ends listing the failed shards.
    with pytest.raises((OSError, RuntimeError), match="No space left on device") as raised:
        run_local(config, stages=stages)
    assert "manifest.json" in str(raised.value)
    assert vesl_writer.is_finished(out, "000000")  # written before the disk filled: intact
    assert not list(out.glob("000001*")) and not list(out.glob("*.tmp-*"))  # nothing partial, no temp
    assert read_json(out / "000000.manifest.json")["images_out"] == 2

    small_disk.free()
    stages = fake_stages()
    assert run_local(config, stages=stages)["finished"] == 3
    assert stages.detector.images == 4
    assert list(iter_output(out)) == reference_output(vesl_input, tmp_path / "reference")


# ---- evaluation cache -----------------------------------------------------------------------------

EVAL_PAUSED_HALF_WAY = """
from cloc_mllm.eval.cache import PredictionCache, cached_predict
from cloc_mllm.eval.sharding import Shard
marker, cache_dir, scored_log, mode = sys.argv[1:5]
def predict(batch):
    if mode == "pause" and "item6" in batch:  # items 0-5 scored and cached
        pause_here(marker)
    with open(scored_log, "a") as f:
        f.write("".join(item + "\\n" for item in batch))
    return [{"value": len(item)} for item in batch]
rows = cached_predict([f"item{i}" for i in range(10)], str, predict, PredictionCache(cache_dir, "task"), Shard(), 2)
assert len(rows) == 10
"""


def test_an_evaluation_killed_half_way_resumes_without_rescoring(tmp_path):
    cache, scored = tmp_path / "cache", tmp_path / "scored.txt"
    marker = tmp_path / "paused"
    kill_at_marker(start(EVAL_PAUSED_HALF_WAY, marker, cache, scored, "pause"), marker)
    assert len(PredictionCache(cache, "task")) == 6

    rerun = start(EVAL_PAUSED_HALF_WAY, tmp_path / "rerun", cache, scored, "run")
    assert rerun.wait(timeout=120) == 0
    assert scored.read_text().split() == [f"item{i}" for i in range(10)]  # each item scored exactly once
    assert len(PredictionCache(cache, "task")) == 10


# ---- LLaVA finetuning -----------------------------------------------------------------------------

# finetune/train.py, but rank FAULT_RANK pauses in step 4 and rank 0 logs each step it trains. The
# deepspeed launcher puts --local_rank first in each rank's argv, so these settings come by env.
FINETUNE_RANK_PAUSED = """
from cloc_mllm.mllm import training
real_step = training.LlavaTrainer.training_step
def training_step(self, *args, **kwargs):
    if os.environ["RANK"] == "0":
        with open(os.environ["FAULT_STEPS_LOG"], "a") as f:
            f.write(f"{self.state.global_step + 1}\\n")
    if os.environ["RANK"] == os.environ["FAULT_RANK"] and self.state.global_step == 3:
        pause_here(os.environ["FAULT_MARKER"])
    return real_step(self, *args, **kwargs)
training.LlavaTrainer.training_step = training_step
training.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_finetune_rank_killed_mid_step_ends_the_job_and_keeps_the_last_checkpoint(world, tmp_path):  # noqa: F811
    out, steps = tmp_path / "run", tmp_path / "steps.txt"
    script = tmp_path / "finetune_with_pause.py"
    marker = tmp_path / "paused"
    script.write_text(PAUSE + FINETUNE_RANK_PAUSED)

    def launch(kill_rank: str, log: Path) -> subprocess.Popen:
        command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(script),
                   "--deepspeed", str(REPO / "finetune" / "zero2.json"), *_args(world, out),
                   "--save_strategy", "steps", "--save_steps", "2"]  # fmt: skip
        env = {
            **script_env(),
            "FAULT_MARKER": str(marker),
            "FAULT_RANK": kill_rank,
            "FAULT_STEPS_LOG": str(steps),
        }
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115

    job = launch("1", tmp_path / "paused.log")
    kill_at_marker(job, marker, timeout=240)
    text = (tmp_path / "paused.log").read_text()
    assert job.returncode != 0 and "exits with return code = -9" in text, text[-3000:]  # ended, not hung

    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert '"global_step": 2' in (out / "checkpoint-2" / "trainer_state.json").read_text()
    LlavaForConditionalGeneration.from_pretrained(out / "checkpoint-2")  # intact
    assert not (out / "model.safetensors").exists()  # nothing claims the run finished

    steps.write_text("")
    rerun = launch("none", tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert steps.read_text().split() == ["3", "4", "5", "6"]  # resumed from checkpoint 2
    assert (out / "model.safetensors").is_file()


def test_a_checkpoint_cut_short_while_saving_is_never_resumed_from(tmp_path):
    """The HF Trainer writes trainer_state.json last: a checkpoint folder without it was killed mid-save."""
    from cloc_mllm.mllm.training import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial" if not complete else b"weights")
        if complete:
            (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # 12 is partial; 10 > 2 by number
