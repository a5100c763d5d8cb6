"""VESL on a local Ray instance (2 CPUs) writes exactly what a single process writes."""

from pathlib import Path

import pytest

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.vesl import tiny
from cloc_mllm.vesl.pipeline import VeslConfig, run_local
from cloc_mllm.vesl.ray_runner import RayOptions, run_ray
from cloc_mllm.vesl.writer import iter_shard, read_json


@pytest.mark.slow
def test_local_ray_matches_single_process(tmp_path):
    cfg = SyntheticWorldConfig(
        num_train=8, num_val=0, num_test=0, images_per_shard=4, min_aspect=0.6, max_aspect=1.6
    )
    write_world(tmp_path / "world", cfg, ["shards"])
    owl = tiny.save_parts(tiny.owl_parts(), tmp_path / "owl")
    blip = tiny.save_parts(tiny.blip_parts(), tmp_path / "blip")

    def config(out: str) -> VeslConfig:
        return VeslConfig(
            input=str(tmp_path / "world" / "shards" / "train" / "{000000..000001}.tar"),
            output=str(tmp_path / out),
            detector=owl,
            captioner=blip,
            caption_mode="both",
            threshold=0.5,
            batch_size=3,
            max_new_tokens=6,
        )

    local = run_local(config("local"))
    on_ray = run_ray(config("ray"), RayOptions(num_cpus=2))
    assert on_ray["images_out"] == local["images_out"] == 8 and on_ray["regions"] == local["regions"] > 0
    for name in ("000000.tar", "000001.tar"):
        ours, theirs = list(iter_shard(tmp_path / "local" / name)), list(iter_shard(tmp_path / "ray" / name))
        assert [(k, jpeg, rec) for k, jpeg, rec in ours] == [(k, jpeg, rec) for k, jpeg, rec in theirs]
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    manifest = read_json(Path(tmp_path / "ray" / "000001.manifest.json"))
    assert manifest == read_json(Path(tmp_path / "local" / "000001.manifest.json"))
    # a finished output needs no cluster: the re-run only rebuilds the total manifest
    assert run_ray(config("ray"), RayOptions(num_cpus=2))["finished"] == 2
