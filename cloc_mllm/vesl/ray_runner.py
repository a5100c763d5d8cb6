"""VESL on Ray: one actor per model stage (on a GPU where the cluster has them), one task per shard.

Each shard task runs the same :func:`~cloc_mllm.vesl.pipeline.label_shard` as a local run, with the
captioner and detector replaced by proxies that call the actors, so a Ray run writes the same bytes as a
single process. Phrase extraction is cheap CPU work and stays in the task. Finished shards are skipped and
every shard is written atomically, exactly as locally, so a run can be resumed or re-run on a new cluster.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .phrases import build_phrase_extractor
from .pipeline import (
    Stages,
    VeslConfig,
    build_captioner,
    build_detector,
    label_shard,
    pending_units,
    write_total_manifest,
)
from .writer import TOTAL_MANIFEST

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. ``address=None`` starts a local instance; ``"auto"`` joins a cluster."""

    address: str | None = None
    num_cpus: int | None = None  # local instance only
    actors_per_stage: int = 1


class StageActor:
    """Holds one model stage; Ray makes it an actor, so the model is loaded once and stays on its device."""

    def __init__(self, config: VeslConfig, stage: str):
        import ray
        import torch

        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray narrows CUDA_VISIBLE_DEVICES to our GPU
        if device == "cpu":  # the captioner and detector actors share the node's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
        build = {"captioner": build_captioner, "detector": build_detector}[stage]
        self.stage = build(config, device)

    def run(self, *args):
        return self.stage(*args)


class ActorCall:
    """A stage callable backed by one actor: ``proxy(images, ...)`` blocks on the actor's result."""

    def __init__(self, handle):
        self.handle = handle

    def __call__(self, *args):
        import ray

        return ray.get(self.handle.run.remote(*args))


@functools.cache
def _phrases(name: str, max_phrases: int):
    return build_phrase_extractor(name, max_phrases)  # once per Ray worker process


def _label_shard_task(unit, config: VeslConfig, captioner, detector) -> str:
    stages = Stages(
        ActorCall(captioner) if captioner is not None else None,
        _phrases(config.phrase_extractor, config.max_phrases),
        ActorCall(detector),
    )
    label_shard(unit, config, stages)
    return unit.name


def _start(options: RayOptions) -> bool:
    """Connect or start Ray; True when this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
    if options.address is None:
        # Local workers must import cloc_mllm even when it is run from a source checkout.
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        kwargs.update(num_cpus=options.num_cpus, runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray.init(address=options.address, **kwargs)
    return True


def _stage_actors(config: VeslConfig, stage: str, count: int) -> list:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    # On CPU-only clusters actors reserve no CPU slot: the shard tasks waiting on them hold the slots.
    resources = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_gpus": 0, "num_cpus": 0}
    actor_class = ray.remote(**resources)(StageActor)
    return [actor_class.remote(config, stage) for _ in range(count)]


def run_ray(config: VeslConfig, options: RayOptions | None = None) -> dict:
    """Label every unfinished shard on Ray; returns the total manifest. Raises if any shard failed."""
    import ray

    options = options or RayOptions()
    Path(config.output).mkdir(parents=True, exist_ok=True)
    units, todo = pending_units(config)
    logger.info("VESL on Ray: %d shards, %d to do", len(units), len(todo))
    errors: dict[str, str] = {}
    started = _start(options) if todo else False
    try:
        if todo:
            n = options.actors_per_stage
            captioners = _stage_actors(config, "captioner", n) if config.caption_mode != "keep" else None
            detectors = _stage_actors(config, "detector", n)
            task = ray.remote(num_cpus=1)(_label_shard_task)
            pending = {
                task.remote(
                    unit,
                    config,
                    captioners[unit.index % n] if captioners else None,
                    detectors[unit.index % n],
                ): unit
                for unit in todo
            }
            with tqdm(total=len(pending), desc="VESL shards (Ray)", unit="shard") as bar:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    unit = pending.pop(done[0])
                    try:
                        ray.get(done[0])
                    except ray.exceptions.RayError as err:
                        logger.error("shard %s (%s) failed: %s", unit.name, unit.origin, err)
                        errors[unit.name] = f"{type(err).__name__}: {err}"
                    bar.update()
    finally:
        if started:
            ray.shutdown()
    summary = write_total_manifest(config, units, errors)
    if errors:
        raise RuntimeError(
            f"{len(errors)} VESL shard(s) failed (see {config.output}/{TOTAL_MANIFEST}): {errors}"
        )
    return summary
