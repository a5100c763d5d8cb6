"""RefCOCO/+/g in refer layout (the synthetic world, or the real files) as lmms-eval tasks, offline.

lmms-eval's ``refcoco*_bbox_rec_*`` tasks read ``lmms-lab-encoder/RefCOCO*`` from the Hub. This writes
the same rows locally, in that dataset's schema (one row per referred object: ``question_id``,
``image``, ``question``, ``answer`` = its expressions, ``segmentation``, ``bbox`` COCO xywh pixels,
``iscrowd``, ``file_name``), as ``datasets.save_to_disk`` directories, plus one task yaml per split that
``include``\\ s lmms-eval's own template by absolute path: the prompt, the answer parser and the
IoU / ACC@0.1-0.9 / Center_ACC scorers are lmms-eval's code, unchanged. Only the data source differs.

Task names carry a prefix (``cloc_world_refcoco_bbox_rec_val``): lmms-eval's task index lets its
built-in tasks win over ``--include_path`` ones of the same name, which would go to the Hub.

    python -m cloc_mllm.eval.lmms_eval_tasks --refer-root data/world/refer --out data/world/lmms_eval
    lmms-eval --model cloc_llava --model_args pretrained=OUT --include_path data/world/lmms_eval \\
        --tasks cloc_world_refcoco_bbox_rec_val --output_path results/lmms
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from cloc_mllm.data.refer import load_refer, refs_file
from cloc_mllm.eval.benchmarks import GROUNDING_SPLITS

DEFAULT_PREFIX = "cloc_world_"
# the lmms-lab datasets' fixed question (the REC prompt is built from the answers, not from it)
QUESTION = "Please carefully observe the area circled in the image and come up with a caption for the area."


def builtin_template(dataset: str) -> Path:
    """lmms-eval's own REC task template for ``refcoco`` / ``refcoco+`` / ``refcocog``."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lmms-eval is not installed (docs/evaluation.md: installing lmms-eval)")
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "tasks"
        / dataset
        / "_default_template_bbox_rec_yaml"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this lmms-eval has no {dataset} REC template")
    return path


def rec_rows(refer_root: str | Path, dataset: str, split_by: str, split: str) -> list[dict]:
    """One lmms-lab schema row per ref of the split; unreadable images are left to the loader's counts."""
    rows = []
    for ref in load_refer(refer_root, dataset, split_by, split):
        x1, y1, x2, y2 = ref.box
        rows.append({
            "question_id": str(ref.ref_id),
            "image": {"bytes": Path(ref.image_path).read_bytes(), "path": None},
            "question": QUESTION,
            "answer": list(ref.sentences),
            "segmentation": [x1, y1, x2, y1, x2, y2, x1, y2],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": 0,
            "file_name": ref.file_name,
        })  # fmt: skip
    return rows


def write_lmms_tasks(
    refer_root: str | Path, out: str | Path, names: list[str] | None = None, prefix: str = DEFAULT_PREFIX
) -> list[str]:
    """Datasets under ``out/{dataset}/`` and ``out/{prefix}{dataset}_bbox_rec_{split}.yaml`` for the
    refer benchmarks in ``names`` (default: all) that have refs; returns the task names written."""
    import datasets

    text, floats = datasets.Value("string"), datasets.Sequence(datasets.Value("float32"))
    features = datasets.Features({
        "question_id": text, "image": datasets.Image(), "question": text,
        "answer": datasets.Sequence(text), "segmentation": floats, "bbox": floats,
        "iscrowd": datasets.Value("int8"), "file_name": text,
    })  # fmt: skip
    out = Path(out)
    by_dataset: dict[str, dict[str, list[dict]]] = {}
    for name in names or [n for n, spec in GROUNDING_SPLITS.items() if spec[0] == "refer"]:
        family, dataset, split_by, split = GROUNDING_SPLITS[name]
        if family != "refer" or not refs_file(refer_root, dataset, split_by).is_file():
            continue
        rows = rec_rows(refer_root, dataset, split_by, split)
        if rows:
            by_dataset.setdefault(dataset, {})[split] = rows
    tasks = []
    for dataset, splits in by_dataset.items():
        target = out / dataset
        data = {split: datasets.Dataset.from_list(rows, features=features) for split, rows in splits.items()}
        datasets.DatasetDict(data).save_to_disk(str(target))
        for split in splits:
            task = f"{prefix}{dataset}_bbox_rec_{split}"
            (out / f"{task}.yaml").write_text(
                f"task: {task}\n"
                f"include: {builtin_template(dataset)}\n"
                f"dataset_path: {target.resolve()}\n"
                "dataset_kwargs:\n  load_from_disk: true\n"
                f"test_split: {split}\n"
            )
            tasks.append(task)
    return tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refer-root", required=True, help="dir with refcoco/, refcoco+/, refcocog/")
    parser.add_argument("--out", required=True, help="task dir, for lmms-eval's --include_path")
    parser.add_argument("--benchmarks", default="", help="comma list, e.g. refcoco_val (default: all)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(argv)
    names = [n for n in args.benchmarks.split(",") if n] or None
    for task in write_lmms_tasks(args.refer_root, args.out, names, args.prefix):
        print(task)


if __name__ == "__main__":
    main()
