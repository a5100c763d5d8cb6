"""The evaluation run behind ``eval/run.py``: which evaluations apply to which model, in what order,
and what gets written.

=========  ===========================================  ==========================================
model      ``grounding`` suite                          ``encoder`` suite
=========  ===========================================  ==========================================
CLOC       grounding head Acc@0.5 on every split        region recognition, region-text and
                                                        image-text retrieval, zero-shot
                                                        classification, grounding head
CLIP       (no grounding head: evaluate via an MLLM)    the same, regions by a CLIP read-out
                                                        (``--region_head``)
MLLM       "Where is ...?" Acc@0.5 (+ Recall@k), and    (not an encoder)
           referring (box -> phrase)
=========  ===========================================  ==========================================

``regions`` is the encoder suite's region part alone (region recognition, region-text retrieval):
another region head of a model already evaluated, without repeating what does not depend on it.

Grounding predictions are sharded over ``torchrun`` ranks, gathered, and cached per model fingerprint
so a rerun resumes; encoder evaluations run on rank 0. Rank 0 writes the report.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from cloc_mllm.atomic_io import write_bytes_atomic
from cloc_mllm.data.coco import CocoDetection, load_coco_captions, load_coco_detection
from cloc_mllm.data.imagefolder import load_image_folder
from cloc_mllm.eval import encoder, report
from cloc_mllm.eval.benchmarks import GROUNDING_SPLITS, GroundingBenchmark, load_grounding_benchmarks
from cloc_mllm.eval.fingerprint import data_fingerprints, files_digest, model_fingerprint
from cloc_mllm.eval.sharding import Shard, barrier, init_distributed

logger = logging.getLogger(__name__)
SUITES = ("grounding", "encoder", "regions", "all")


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "Model dir: a CLOC model, an HF CLIP model, or a finetuned LLaVA."})
    data_root: str = field(metadata={"help": "Holds refer/, flickr30k_entities/, coco/ (and imagefolder/)."})
    out: str = field(metadata={"help": "Output dir for results.json, results.md, plots and the cache."})
    suite: str = field(default="all", metadata={"help": f"One of {SUITES}."})
    benchmarks: str = field(
        default="",
        metadata={"help": f"Comma list of grounding splits (default all): {','.join(GROUNDING_SPLITS)}"},
    )
    refer_root: str | None = field(default=None, metadata={"help": "Refer layout root (default DATA/refer)."})
    refer_image_dir: str | None = field(
        default=None,
        metadata={"help": "COCO train2014 images (default REFER/images/mscoco/images/train2014)."},
    )
    flickr_root: str | None = field(default=None, metadata={"help": "Flickr30k Entities root."})
    flickr_image_dir: str | None = field(default=None, metadata={"help": "Flickr30k images dir."})
    coco_root: str | None = field(
        default=None, metadata={"help": "COCO root: annotations/, {split}/ images."}
    )
    coco_split: str = field(default="val", metadata={"help": "COCO split name, e.g. val2017 for real COCO."})
    classification_root: str | None = field(
        default=None,
        metadata={"help": "ImageNet-style folder for zero-shot classification (default DATA/imagefolder)."},
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer dir when the model dir has none."}
    )
    region_head: str | None = field(
        default=None,
        metadata={"help": "Region head: default the model's own; for a plain CLIP clip_roialign (default, the paper's baseline) or clip_maskclip."},
    )
    image_mode: str = field(
        default="resize", metadata={"help": "Encoder preprocessing: resize | pad (never crop)."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N items of each split."}
    )
    probe_split: str = field(
        default="train",
        metadata={"help": "COCO split whose boxes fit the patch probes (train2017 for COCO); '' = none."},
    )
    probe_layers: str = field(
        default="-1,-2", metadata={"help": "Tower layers probed, as LLaVA's mm_vision_select_layer counts."}
    )
    probe_train_images: int = field(default=500, metadata={"help": "Images the patch probes are fitted on."})
    templates: str = field(
        default="clip", metadata={"help": "Class-name prompts: clip (an ensemble) | plain (the bare name)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Images per forward pass."})
    max_new_tokens: int = field(default=32, metadata={"help": "MLLM answer length."})
    referring: bool = field(default=True, metadata={"help": "Also evaluate MLLM referring (box -> phrase)."})
    digit_gain_items: int = field(
        default=256,
        metadata={
            "help": "MLLM: grounding items scored for the per-digit image gain (what the image gives each box "
            "digit; cloc_mllm.eval.digit_gain); 0 = not computed."
        },
    )
    region_prompts: bool | None = field(
        default=None, metadata={"help": "Referring with <region> tokens (default: when the MLLM has them)."}
    )
    gallery_size: int = field(default=12, metadata={"help": "Images per gallery (0: no galleries)."})
    device: str | None = field(default=None, metadata={"help": "Default: this rank's GPU, else CPU."})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16."})

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"--suite must be one of {SUITES}, got {self.suite!r}")
        if self.templates not in encoder.TEMPLATE_SETS:
            raise ValueError(f"--templates must be one of {sorted(encoder.TEMPLATE_SETS)}, got {self.templates!r}")
        if self.image_mode not in ("resize", "pad"):
            raise ValueError(
                f"--image_mode must be resize or pad (cropping cuts referred objects), got {self.image_mode!r}"
            )


def model_kind(model_dir: str | Path) -> str:
    """``cloc``, ``clip`` or ``mllm`` from the directory's config (a LoRA dir is an MLLM)."""
    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        return "mllm"
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; --model must be a saved model directory")
    model_type = json.loads(config_path.read_text()).get("model_type", "")
    if model_type == "cloc":
        return "cloc"
    if model_type == "clip":
        return "clip"
    if "llava" in model_type:
        return "mllm"
    raise ValueError(f"{config_path}: model_type {model_type!r} is not cloc, clip or a LLaVA")


@dataclass
class LoadedModel:
    kind: str
    model: torch.nn.Module
    tokenizer: object = None  # CLOC / CLIP text tokenizer
    processor: object = None  # MLLM processor
    region_head: str | None = None


def load_model(args: EvalArguments, device: torch.device) -> LoadedModel:
    kind = model_kind(args.model)
    dtype = getattr(torch, args.dtype)
    if kind == "mllm":
        from cloc_mllm.mllm.inference import load_mllm

        model, processor = load_mllm(args.model, device=device, dtype=dtype)
        return LoadedModel(kind, model, processor=processor)
    from cloc_mllm import CLOCModel
    from cloc_mllm.data.tokenizer import load_tokenizer

    model = CLOCModel.from_pretrained(args.model) if kind == "cloc" else CLOCModel.from_clip(args.model)
    head = args.region_head or ("clip_roialign" if kind == "clip" else None)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    return LoadedModel(kind, model.to(device, dtype).eval(), tokenizer=tokenizer, region_head=head)


@dataclass
class DataPaths:
    refer: Path
    flickr: Path
    coco: Path
    classification: Path

    @classmethod
    def from_args(cls, args: EvalArguments) -> DataPaths:
        root = Path(args.data_root)
        return cls(
            Path(args.refer_root) if args.refer_root else root / "refer",
            Path(args.flickr_root) if args.flickr_root else root / "flickr30k_entities",
            Path(args.coco_root) if args.coco_root else root / "coco",
            Path(args.classification_root) if args.classification_root else root / "imagefolder",
        )

    def coco_json(self, kind: str, split: str) -> Path:
        return self.coco / "annotations" / f"{kind}_{split}.json"

    def fingerprints(self, benchmarks: list[GroundingBenchmark], coco_split: str) -> dict[str, str]:
        files = [self.coco_json("instances", coco_split), self.coco_json("captions", coco_split)]
        files += list(self.refer.glob("*/instances.json")) + list(self.refer.glob("*/refs(*).p"))
        prints = data_fingerprints(files)
        for bench in benchmarks:
            family, _, _, split = GROUNDING_SPLITS[bench.name]
            if family == "flickr":
                ids = (self.flickr / f"{split}.txt").read_text().split()
                tree = [self.flickr / f"{split}.txt"]
                tree += [
                    self.flickr / d / f"{i}.{ext}"
                    for i in ids
                    for d, ext in (("Annotations", "xml"), ("Sentences", "txt"))
                ]
                prints[f"{self.flickr}:{split}"] = files_digest(tree)
        return prints


def _device(args: EvalArguments, shard: Shard) -> torch.device:
    if args.device:
        return torch.device(args.device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device() if shard.world_size > 1 else 0)
    return torch.device("cpu")


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def run_evaluation(args: EvalArguments) -> dict | None:
    """Evaluate, write the report under ``args.out`` (rank 0), and return the results (None elsewhere)."""
    started = time.perf_counter()
    shard = init_distributed()
    loaded = load_model(args, _device(args, shard))
    paths = DataPaths.from_args(args)
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()] or None
    benchmarks, unavailable = load_grounding_benchmarks(
        paths.refer, paths.flickr, names, args.refer_image_dir, args.flickr_image_dir, args.limit
    )
    fingerprint = model_fingerprint(args.model)
    settings = json.dumps(
        [args.image_mode, args.max_new_tokens, args.region_head, args.region_prompts, args.dtype]
    )
    cache_dir = (
        Path(args.out) / "cache" / f"{fingerprint[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    )
    timer = _Timer()
    results: dict = {"unavailable": dict(unavailable)}
    rows: dict[str, dict] = {}
    if args.suite in ("grounding", "all") or loaded.kind == "cloc":
        rows = _grounding(args, loaded, benchmarks, cache_dir, shard, timer, results)
    if args.suite in ("encoder", "regions", "all") and shard.is_main:
        _encoder(args, loaded, benchmarks, paths, timer, results)
    barrier(shard)
    if not shard.is_main:
        return None
    results.update(
        model={
            "path": str(args.model),
            "kind": loaded.kind,
            "fingerprint": fingerprint,
            "region_head": loaded.region_head,
        },
        data={"root": str(args.data_root), "fingerprints": paths.fingerprints(benchmarks, args.coco_split)},
        counts={
            b.name: {"items": len(b.items), **{f"loader_skipped_{k}": v for k, v in b.skipped.items()}}
            for b in benchmarks
        },
        config=asdict(args),
        timing={**timer.seconds, "total_seconds": round(time.perf_counter() - started, 3)},
        environment={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": str(_device(args, shard)),
            "world_size": shard.world_size,
        },
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_outputs(Path(args.out), results, benchmarks, rows, args.gallery_size)
    return results


def _grounding(args, loaded, benchmarks, cache_dir, shard, timer, results) -> dict[str, dict]:
    """Grounding (and referring) predictions on every rank; metrics land in ``results``."""
    if loaded.kind == "clip":
        results["unavailable"]["grounding"] = (
            "a plain CLIP has no grounding head; evaluate it through an MLLM"
        )
        return {}
    if loaded.kind == "cloc" and loaded.model.prompter is None:
        results["unavailable"]["grounding"] = (
            f"trained with loss_mode={loaded.model.config.loss_mode!r}: no Prompter, so no grounding head; "
            "evaluate it through an MLLM"
        )
        return {}
    if loaded.kind == "cloc":
        transform = encoder.encoder_transform(loaded.model, args.model, args.image_mode)
        results["grounding_source"] = "CLOC grounding head"
        results["grounding"], rows = timer.run(
            "grounding_head", encoder.evaluate_grounding_head, loaded.model, loaded.tokenizer, benchmarks,
            transform, args.batch_size, cache_dir, shard,
        )  # fmt: skip
        return rows
    from cloc_mllm.eval.mllm_grounding import evaluate_mllm_grounding
    from cloc_mllm.eval.referring import evaluate_referring

    results["grounding_source"] = "MLLM answers"
    results["grounding"], rows = timer.run(
        "mllm_grounding", evaluate_mllm_grounding, loaded.model, loaded.processor, benchmarks, cache_dir, shard,
        args.batch_size, args.max_new_tokens,
    )  # fmt: skip
    if args.digit_gain_items and shard.is_main:  # a few hundred items: one rank is enough
        from cloc_mllm.eval.digit_gain import image_digit_gain

        results["image_digit_gain"] = timer.run(
            "image_digit_gain", image_digit_gain, loaded.model, loaded.processor, benchmarks, args.digit_gain_items,
            batch_size=args.batch_size,
        )  # fmt: skip
    if args.referring:
        use_regions = args.region_prompts
        if use_regions is None:
            use_regions = bool(getattr(loaded.model.config, "region_prompts", False))
        results["referring"], _ = timer.run(
            "referring", evaluate_referring, loaded.model, loaded.processor, benchmarks, cache_dir, shard,
            args.batch_size, args.max_new_tokens, use_regions,
        )  # fmt: skip
    return rows


def _encoder(args, loaded, benchmarks, paths: DataPaths, timer, results) -> None:
    if loaded.kind == "mllm":
        results["unavailable"]["encoder"] = "an MLLM is not an encoder; evaluate its CLOC/CLIP model instead"
        return
    model, tok, head = loaded.model, loaded.tokenizer, loaded.region_head
    transform = encoder.encoder_transform(model, args.model, args.image_mode)
    out: dict = {}
    det_json, cap_json = (
        paths.coco_json("instances", args.coco_split),
        paths.coco_json("captions", args.coco_split),
    )
    if det_json.is_file():
        detection = load_coco_detection(det_json, paths.coco / args.coco_split)
        out["region_recognition"] = timer.run(
            "region_recognition",
            encoder.region_recognition,
            model,
            tok,
            CocoDetection(detection.categories, detection.regions[: args.limit]),
            transform,
            args.batch_size,
            head,
            encoder.TEMPLATE_SETS[args.templates],
        )
        out["region_recognition"]["head"] = head or model.config.region_head
        if args.suite != "regions":
            _patch_probe(args, model, detection, paths, transform, timer, out, results)
    else:
        results["unavailable"]["region_recognition"] = f"no {det_json}"
    if benchmarks:
        out["region_text_retrieval"] = timer.run(
            "region_text_retrieval",
            lambda: {
                b.name: encoder.region_text_retrieval(model, tok, b, transform, args.batch_size, head)
                for b in benchmarks
            },
        )
    if args.suite == "regions":
        results["encoder"] = out
        return
    if cap_json.is_file():
        images = load_coco_captions(cap_json, paths.coco / args.coco_split)[: args.limit]
        out["image_text_retrieval"] = timer.run(
            "image_text_retrieval",
            encoder.image_text_retrieval,
            model,
            tok,
            images,
            transform,
            args.batch_size,
        )
    else:
        results["unavailable"]["image_text_retrieval"] = f"no {cap_json}"
    if paths.classification.is_dir():
        folder = load_image_folder(paths.classification)
        folder.items = folder.items[: args.limit]
        out["zero_shot_classification"] = timer.run(
            "zero_shot_classification",
            encoder.zero_shot_classification,
            model,
            tok,
            folder,
            transform,
            args.batch_size,
            encoder.TEMPLATE_SETS[args.templates],
        )
    else:
        results["unavailable"]["zero_shot_classification"] = f"no image folder at {paths.classification}"
    results["encoder"] = out


def _patch_probe(args, model, test: CocoDetection, paths: DataPaths, transform, timer, out, results) -> None:
    """Dense linear probes of the tower's patch tokens, fitted on ``--probe_split``, scored on ``test``
    (the ``--coco_split`` boxes; its first ``--limit`` images)."""
    if not args.probe_split:
        return
    fit_json = paths.coco_json("instances", args.probe_split)
    if not fit_json.is_file():
        results["unavailable"]["patch_probe"] = f"no {fit_json} to fit the probes on"
        return
    from cloc_mllm.eval.patch_probe import patch_probe

    fit = load_coco_detection(fit_json, paths.coco / args.probe_split)
    out["patch_probe"] = timer.run(
        "patch_probe", patch_probe, model, fit, test, transform, [int(v) for v in args.probe_layers.split(",")],
        args.probe_train_images, args.limit, args.batch_size,
    )  # fmt: skip


def write_outputs(
    out: Path, results: dict, benchmarks: list[GroundingBenchmark], rows: dict, gallery_size: int
) -> None:
    """results.json, predictions/*.jsonl, plots and results.md (which links the plots)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if results.get("grounding"):
        report.plot_bars(
            report.grounding_bars(results["grounding"]), "Grounding Acc@0.5 per split", out / "grounding.png"
        )
        plots.append("grounding.png")
    if results.get("referring"):
        values = {b: {"noun": m["noun"], "exact": m["exact"]} for b, m in results["referring"].items()}
        report.plot_bars(values, "Referring: noun / exact match", out / "referring.png")
        plots.append("referring.png")
    if results.get("encoder"):
        report.plot_bars(
            report.encoder_bars(results["encoder"]), "Encoder-level evaluation", out / "encoder.png"
        )
        plots.append("encoder.png")
    for bench in benchmarks:
        bench_rows = rows.get(bench.name)
        if not bench_rows:
            continue
        lines = "".join(json.dumps(bench_rows[item.key]) + "\n" for item in bench.items)
        write_bytes_atomic(out / "predictions" / f"{bench.name}.jsonl", lines.encode("utf-8"))
        name = f"gallery_{bench.name}.png"
        if gallery_size and report.plot_gallery(
            bench.items, bench_rows, out / name, bench.name, gallery_size
        ):
            plots.append(name)
    report.write_json(out / "results.json", results)
    write_bytes_atomic(out / "results.md", report.results_markdown(results, plots).encode("utf-8"))
    logger.info("wrote %s", out / "results.md")


def main(argv: list[str] | None = None) -> None:
    """The evaluation command (``eval/run.py``, ``cloc-mllm eval``)."""
    (args,) = transformers.HfArgumentParser(EvalArguments).parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_evaluation(args)
