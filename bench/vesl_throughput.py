"""VESL throughput: images/s of each stage (captioner, noun phrases, detector) and of the whole shard job.

The whole job is :func:`cloc_mllm.vesl.pipeline.label_shard` on a WebDataset tar of synthetic-world
images: read, decode, caption, extract phrases, detect, write. On CPU the models are the tiny random ones
the tests use (this measures the pipeline's own overhead); on a GPU they have the real shapes, random
weights: OWLv2-B/16 (960 px, 3600 boxes) and a BLIP-base-sized captioner, in float16.

    python -m bench.vesl_throughput                 # tiny models on CPU, OWLv2-B shapes on a GPU
    python -m bench.vesl_throughput --shapes real --images 4 --batch-size 4   # real shapes on CPU
    python -m bench.vesl_throughput --smoke         # seconds; checks the run, not the timings
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from bench.common import bench_parser, device_description, pick_device, save_results, time_one
from cloc_mllm.data.synthetic import SyntheticWorldConfig, generate_sample
from cloc_mllm.vesl import tiny
from cloc_mllm.vesl.captioner import HFCaptioner
from cloc_mllm.vesl.detector import OwlPredictor, RegionDetector
from cloc_mllm.vesl.phrases import build_phrase_extractor
from cloc_mllm.vesl.pipeline import Stages, VeslConfig, batched, label_shard
from cloc_mllm.vesl.sources import WorkUnit

NAME = "vesl_throughput"


def write_input_tar(path: Path, num_images: int, seed: int) -> list:
    """A tar of synthetic-world samples (mixed aspect ratios); returns the samples."""
    world = SyntheticWorldConfig(
        seed=seed, image_size=256, min_aspect=0.6, max_aspect=1.6, num_train=num_images
    )
    samples = [generate_sample(world, "train", i) for i in range(num_images)]
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for s in samples:
            writer.write({"__key__": s.key, "jpg": s.jpeg, "txt": s.caption.encode()})
    return samples


def build_models(real: bool, device: torch.device):
    """(captioner, detector predictor, description) on ``device``."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    owl = tiny.owlv2_base_parts() if real else tiny.owl_parts()
    blip = tiny.blip_parts(image_size=384, hidden=768, layers=12) if real else tiny.blip_parts()
    owl_model, blip_model = owl[0].to(device, dtype), blip[0].to(device, dtype)
    captioner = HFCaptioner(blip_model, blip[1], prompt="a picture of", max_new_tokens=30 if real else 12)
    what = "OWLv2-B/16 960px + BLIP-base shapes" if real else "tiny OWLv2 64px + tiny BLIP"
    return captioner, OwlPredictor(owl_model, owl[1]), f"{what}, {str(dtype).removeprefix('torch.')}"


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0], iters=3, warmup=1)
    parser.add_argument("--images", type=int, default=64, help="images per timed run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--shapes", choices=("auto", "tiny", "real"), default="auto", help="auto: real on a GPU, tiny on CPU"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.batch_size, args.iters, args.warmup = 8, 4, 1, 0
    device = pick_device(args.device)
    real = args.shapes == "real" or (args.shapes == "auto" and device.type == "cuda" and not args.smoke)
    captioner, predictor, models = build_models(real, device)
    detector = RegionDetector(predictor, threshold=0.1)
    phrases = build_phrase_extractor("pattern")

    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "input.tar"
        samples = write_input_tar(tar, args.images, args.seed)
        images = [Image.open(io.BytesIO(s.jpeg)).convert("RGB") for s in samples]
        captions = [s.caption for s in samples]
        queries = [phrases(c) or ["object"] for c in captions]
        batches = list(batched(range(len(images)), args.batch_size))
        config = VeslConfig(
            input=str(tar), output=str(Path(tmp) / "out"), caption_mode="both", captioner="in-memory",
            batch_size=args.batch_size, device=str(device),
        )  # fmt: skip
        stages = Stages(captioner, phrases, detector)
        fns = {
            "captioner": lambda: [captioner([images[i] for i in b]) for b in batches],
            "phrases": lambda: [phrases(c) for c in captions],
            "detector": lambda: [detector([images[i] for i in b], [queries[i] for i in b]) for b in batches],
            "whole (label_shard)": lambda: label_shard(WorkUnit(0, str(tar)), config, stages),
        }
        timings = {name: time_one(fn, device, args.warmup, args.iters, desc=name) for name, fn in fns.items()}

    whole = timings["whole (label_shard)"].median_s
    rows = [
        {
            "stage": name,
            "images": args.images,
            "median_s": t.median_s,
            "images_per_s": args.images / t.median_s,
            "share_of_whole": t.median_s / whole,
            "peak_mb": t.peak_memory_mb,
        }
        for name, t in timings.items()
    ]
    summary = [
        f"{models} on {device_description(device)}, batch {args.batch_size}",
        f"detector {timings['detector'].median_s / whole:.0%} and captioner "
        f"{timings['captioner'].median_s / whole:.0%} of the whole job's time",
        f"whole pipeline: {args.images / whole:.3g} images/s",
    ]
    path = save_results(
        NAME, device, args, {"timings": {k: v.as_dict() for k, v in timings.items()}}, rows, summary
    )
    print(f"results: {path}")
    for line in summary:
        print(line)  # the last line is the figure bench.run_all collects
    return {"rows": rows, "summary": summary, "path": str(path)}


if __name__ == "__main__":
    main()
