"""ImageNet-style folder for zero-shot classification: ``root/<class>/<image>``.

Folder names are often ids (``n01440764``); an optional ``classnames.txt`` (one ``folder name`` or
``folder<TAB>name`` line per class) gives the words that go into the text prompts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


@dataclass(frozen=True)
class LabelledImage:
    image_path: str
    label: int


@dataclass
class ImageFolder:
    classnames: list[str]  # prompt words, index = label
    items: list[LabelledImage]


def _read_classnames(path: Path, folders: list[str]) -> dict[str, str]:
    names = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 1) if "\t" in line else line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'folder name', got {line!r}")
        names[parts[0].strip()] = parts[1].strip()
    missing = [f for f in folders if f not in names]
    if missing:
        raise ValueError(f"{path}: no class name for folders {missing[:5]}")
    return names


def load_image_folder(root: str | Path, stats: Counter | None = None) -> ImageFolder:
    """Classes are the sorted sub-folders; files that are not images are counted, not returned."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: missing image folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class sub-folders")
    names_file = root / "classnames.txt"
    names = _read_classnames(names_file, folders) if names_file.is_file() else {}
    skipped: Counter = Counter()
    items = []
    for label, folder in enumerate(folders):
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append(LabelledImage(str(path), label))
            else:
                skipped["not_an_image"] += 1
    classnames = [names.get(f, f.replace("_", " ")) for f in folders]
    suffix = f"; skipped {dict(skipped)}" if skipped else ""
    logger.info("%s: %d classes, %d images%s", root, len(folders), len(items), suffix)
    if stats is not None:
        stats.update(skipped)
    return ImageFolder(classnames, items)
