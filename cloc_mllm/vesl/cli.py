"""The VESL command (``scripts/vesl.py``, ``cloc-mllm vesl``): region-text pseudo labels for images,
caption -> noun phrases -> OWLv2 -> shards.

    python scripts/vesl.py --input 'images/{000..099}.tar' --output out/ \
        --captioner Salesforce/blip-image-captioning-large --detector google/owlv2-base-patch16-ensemble \
        --batch-size 16 [--num-workers 4 | --ray [--ray-address auto]]

Re-running skips finished shards. Every VeslConfig field is a flag; see --help and docs/vesl.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from cloc_mllm.vesl.pipeline import VeslConfig, run_local
from cloc_mllm.vesl.ray_runner import RayOptions, run_ray


@dataclass
class RunArguments:
    num_workers: int = field(default=1, metadata={"help": "Local processes, one shard each at a time."})
    ray: bool = field(default=False, metadata={"help": "Run on Ray (a local instance unless --ray-address)."})
    ray_address: str | None = field(default=None, metadata={"help": "'auto' or host:port of a Ray cluster."})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of the local Ray instance."})
    actors_per_stage: int = field(default=1, metadata={"help": "Ray actors per model stage (GPUs each)."})


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, run = HfArgumentParser((VeslConfig, RunArguments)).parse_args_into_dataclasses(args=argv)
    if run.ray or run.ray_address:
        summary = run_ray(config, RayOptions(run.ray_address, run.ray_num_cpus, run.actors_per_stage))
    else:
        summary = run_local(config, run.num_workers)
    keys = ("shards", "finished", "images_in", "images_out", "regions", "failures", "no_regions")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return summary


if __name__ == "__main__":
    main()
