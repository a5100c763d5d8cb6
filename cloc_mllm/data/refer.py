"""RefCOCO / RefCOCO+ / RefCOCOg in the original refer layout.

``DATA/{dataset}/instances.json`` (COCO boxes) + ``DATA/{dataset}/refs({split_by}).p`` (expressions).
The ``.p`` files are pickles from the internet, so they are read with :func:`load_plain_pickle`, which
admits plain containers and scalars only: a pickle naming any class or function (``os.system`` and
friends) is refused before anything runs. Counts per split are logged next to the official release's,
so an incomplete download shows at once.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Official release counts, (refs, sentences) per split, from the refer toolkit's statistics.
OFFICIAL_COUNTS: dict[tuple[str, str], dict[str, tuple[int, int]]] = {
    ("refcoco", "unc"): {
        "train": (42404, 120624),
        "val": (3811, 10834),
        "testA": (1975, 5657),
        "testB": (1810, 5095),
    },
    ("refcoco+", "unc"): {
        "train": (42278, 120191),
        "val": (3805, 10758),
        "testA": (1975, 5726),
        "testB": (1798, 4889),
    },
    ("refcocog", "umd"): {"train": (42226, 80512), "val": (2573, 4896), "test": (5023, 9602)},
    ("refcocog", "google"): {"train": (44822, 85474), "val": (5000, 9536)},
}
DEFAULT_IMAGE_SUBDIR = "images/mscoco/images/train2014"
_PLAIN_TYPES = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, type(None))


@dataclass(frozen=True)
class RefRecord:
    """One referred object with all its expressions. ``box`` is pixel xyxy on the original image."""

    ref_id: int
    image_id: int
    file_name: str
    box: tuple[float, float, float, float]
    sentences: list[str]
    category: str
    ann_id: int = -1
    split: str = ""
    image_path: str = ""
    width: int = 0
    height: int = 0


class UnsafePickleError(ValueError):
    """A pickle holds something other than plain containers and scalars."""


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: no class, function or module can be named, so nothing can be called."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it references {module}.{name}")


def load_plain_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only dict/list/tuple/set/str/bytes/int/float/bool/None.

    Raises :class:`UnsafePickleError` naming the file for a forbidden global (GLOBAL, STACK_GLOBAL,
    INST, EXT), a persistent id, a REDUCE/BUILD on something not plain, or a corrupt stream.
    """
    data = Path(path).read_bytes()
    try:
        # Python 2 pickles (the refer release) store str as bytes; utf-8 is what their text is.
        obj = _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except Exception as exc:  # any failure of an untrusted stream is a refusal, reported with its cause
        raise UnsafePickleError(
            f"{path}: refused to unpickle ({exc}); only plain containers and scalars are allowed"
        ) from exc
    _check_plain(obj, path)
    return obj


def _check_plain(obj: Any, path: str | Path) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if not isinstance(item, _PLAIN_TYPES):
            raise UnsafePickleError(f"{path}: refused: holds a {type(item).__name__}, not a plain value")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


def refs_file(data_root: str | Path, dataset: str, split_by: str) -> Path:
    return Path(data_root) / dataset / f"refs({split_by}).p"


def load_refer(
    data_root: str | Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    split: str = "val",
    image_dir: str | Path | None = None,
    stats: Counter | None = None,
) -> list[RefRecord]:
    """Records of one split, in refs order.

    ``image_dir`` defaults to ``data_root/images/mscoco/images/train2014`` (where the refer API looks).
    Refs naming an unknown annotation or image, zero-area boxes and refs without sentences are skipped
    and counted in ``stats`` (a Counter the caller may pass) and in the log line.
    """
    data_root = Path(data_root)
    refs_path = refs_file(data_root, dataset, split_by)
    inst_path = data_root / dataset / "instances.json"
    for path in (refs_path, inst_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; expected the refer layout DATA/{dataset}/...")
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    instances = json.loads(inst_path.read_text())
    images = {img["id"]: img for img in instances.get("images", [])}
    anns = {ann["id"]: ann for ann in instances.get("annotations", [])}
    categories = {cat["id"]: cat["name"] for cat in instances.get("categories", [])}
    available = sorted({str(ref.get("split")) for ref in refs})
    if split not in available:
        raise ValueError(f"{refs_path}: no split {split!r}; the file has {available}")
    image_dir = Path(image_dir) if image_dir is not None else data_root / DEFAULT_IMAGE_SUBDIR
    skipped: Counter = Counter()
    records = [
        record
        for ref in refs
        if ref.get("split") == split
        and (record := _make_record(ref, images, anns, categories, image_dir, skipped)) is not None
    ]
    official = OFFICIAL_COUNTS.get((dataset, split_by), {}).get(split)
    _log_counts(f"{dataset}({split_by}) {split}", records, skipped, official)
    if stats is not None:
        stats.update(skipped)
    return records


def image_objects(data_root: str | Path, dataset: str = "refcoco") -> dict[int, list[tuple[tuple[float, float, float, float], str]]]:
    """Every annotated object of each image of ``dataset``'s instances.json: image id -> [(pixel xyxy,
    category name)]. Referred or not, these are what a grounder that ignores the words could answer."""
    inst_path = Path(data_root) / dataset / "instances.json"
    if not inst_path.is_file():
        raise FileNotFoundError(f"{inst_path}: missing; expected the refer layout DATA/{dataset}/...")
    instances = json.loads(inst_path.read_text())
    categories = {cat["id"]: cat["name"] for cat in instances.get("categories", [])}
    objects: dict[int, list] = {}
    for ann in instances.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w > 0 and h > 0:
            box = (x, y, x + w, y + h)
            objects.setdefault(int(ann["image_id"]), []).append((box, categories.get(ann.get("category_id"), "object")))
    return objects


def _make_record(
    ref: dict, images: dict, anns: dict, categories: dict, image_dir: Path, stats: Counter
) -> RefRecord | None:
    ann = anns.get(ref.get("ann_id"))
    image = images.get(ref.get("image_id"))
    if ann is None:
        stats["unknown_annotation"] += 1
        return None
    if image is None:
        stats["unknown_image"] += 1
        return None
    x, y, w, h = (float(v) for v in ann["bbox"])
    if w <= 0 or h <= 0:
        stats["zero_area_box"] += 1
        return None
    sentences = [s.get("sent") or s.get("raw", "") for s in ref.get("sentences", [])]
    sentences = [s.strip() for s in sentences if s and s.strip()]
    if not sentences:
        stats["no_sentence"] += 1
        return None
    return RefRecord(
        ref_id=int(ref["ref_id"]),
        image_id=int(image["id"]),
        file_name=image["file_name"],
        box=(x, y, x + w, y + h),
        sentences=sentences,
        category=categories.get(ann.get("category_id", ref.get("category_id")), "object"),
        ann_id=int(ann["id"]),
        split=str(ref["split"]),
        image_path=str(image_dir / image["file_name"]),
        width=int(image.get("width", 0)),
        height=int(image.get("height", 0)),
    )


def _log_counts(
    name: str, records: list[RefRecord], skipped: Counter, official: tuple[int, int] | None
) -> None:
    n_sent = sum(len(r.sentences) for r in records)
    line = f"{name}: {len(records)} refs, {n_sent} sentences, {len(records)} boxes"
    if skipped:
        line += f"; skipped {dict(skipped)}"
    if official is not None and official != (len(records), n_sent):
        ref_n, sent_n = official
        logger.warning(
            "%s -- the official release has %d refs / %d sentences (incomplete download or a custom set)",
            line,
            ref_n,
            sent_n,
        )
    else:
        logger.info(line)
