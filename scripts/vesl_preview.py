"""Look at VESL labels: a PNG grid of labelled images, and precision/recall against ground truth.

    python scripts/vesl_preview.py --output out/ --png out/preview.png \
        [--ground-truth 'world/shards/train/{000000..000007}.tar' --report out/quality]

--ground-truth names an input whose records carry ground-truth regions: usually the VESL input itself
(the synthetic world's shards), or a COCO instances json when VESL labelled the captions json. Its boxes
are drawn in white, and out/quality.json + .md give precision/recall per phrase at IoU 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from cloc_mllm.vesl.preview import render_preview
from cloc_mllm.vesl.quality import (
    MATCH_MODES,
    ground_truth_by_key,
    paired_regions,
    quality_report,
    report_markdown,
)
from cloc_mllm.vesl.writer import write_json_atomic


@dataclass
class PreviewArguments:
    output: str = field(metadata={"help": "A VESL output directory."})
    png: str = field(default="", metadata={"help": "Grid PNG path (default: OUTPUT/preview.png)."})
    num_images: int = field(default=16, metadata={"help": "Images in the grid."})
    columns: int = field(default=4, metadata={"help": "Grid columns."})
    ground_truth: str | None = field(
        default=None, metadata={"help": "An input with ground-truth regions, joined to the output by key."}
    )
    image_root: str | None = field(default=None, metadata={"help": "Image dir of a json input."})
    shard_size: int = field(default=1000, metadata={"help": "As given to vesl.py for folder/json inputs."})
    report: str = field(default="", metadata={"help": "Quality report path stem (default: OUTPUT/quality)."})
    match: str = field(default="phrase", metadata={"help": f"Phrase matching: {MATCH_MODES}."})
    iou: float = field(default=0.5, metadata={"help": "IoU for a true positive."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(PreviewArguments).parse_args_into_dataclasses(args=argv)
    out = Path(args.output)
    truth = None
    result: dict = {}
    if args.ground_truth:
        truth = ground_truth_by_key(args.ground_truth, args.shard_size, args.image_root)
        report = quality_report(paired_regions(args.output, truth), args.match, args.iou)
        stem = Path(args.report) if args.report else out / "quality"
        write_json_atomic(stem.with_suffix(".json"), report)
        stem.with_suffix(".md").write_text(report_markdown(report))
        print(report_markdown(report))
        result["report"] = report
    png = render_preview(args.output, args.png or out / "preview.png", args.num_images, args.columns, truth)
    print(f"preview: {png}")
    result["png"] = str(png)
    return result


if __name__ == "__main__":
    main()
