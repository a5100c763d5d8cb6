"""Real photographs that ship inside installed wheels, for tests and demos that may not download.

The synthetic world has flat shapes on clean backgrounds; these are camera pictures (texture, clutter,
JPEG noise, odd sizes, grayscale, alpha). scikit-image's ``skimage/data`` and matplotlib's
``mpl-data/sample_data`` carry them in the wheel, and imgaug's wheel carries a quokka photo with a
hand-drawn box (``quokka_annotations.json``). Files are located, never imported: imgaug itself does not
import under NumPy 2, and its data files need no code. Missing packages just give fewer photos.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

# name -> (file in skimage/data, a caption a person would write)
SKIMAGE_PHOTOS = {
    "astronaut": ("astronaut.png", "an astronaut in a white suit in front of a flag"),
    "coffee": ("coffee.png", "a cup of coffee on a saucer with a spoon"),
    "chelsea": ("chelsea.png", "a tabby cat looking to the side"),
    "rocket": ("rocket.jpg", "a rocket on the launch pad"),
    "motorcycle": ("motorcycle_left.png", "a red motorcycle parked in a garage"),
    "camera": ("camera.png", "a man with a camera on a tripod"),  # grayscale
    "coins": ("coins.png", "old coins on a dark table"),  # grayscale
    "horse": ("horse.png", "the silhouette of a horse"),  # RGBA, transparent background
}


@dataclass(frozen=True)
class SamplePhoto:
    """One photograph on disk; ``boxes`` are pixel xyxy annotations where the source has them."""

    name: str
    path: Path
    caption: str
    source: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    labels: tuple[str, ...] = ()


def _skimage_photos() -> list[SamplePhoto]:
    spec = importlib.util.find_spec("skimage.data") if importlib.util.find_spec("skimage") else None
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return [
        SamplePhoto(name, root / file, caption, "scikit-image")
        for name, (file, caption) in SKIMAGE_PHOTOS.items()
        if (root / file).is_file()
    ]


def _matplotlib_photos() -> list[SamplePhoto]:
    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    caption = "a portrait of a woman in a navy uniform"
    return [SamplePhoto("grace_hopper", path, caption, "matplotlib")] if path.is_file() else []


def _imgaug_photos() -> list[SamplePhoto]:
    try:
        dist = importlib.metadata.distribution("imgaug")
    except importlib.metadata.PackageNotFoundError:
        return []
    image = Path(dist.locate_file("imgaug/quokka.jpg"))
    notes = Path(dist.locate_file("imgaug/quokka_annotations.json"))
    if not image.is_file() or not notes.is_file():
        return []
    boxes = json.loads(notes.read_text())["bounding_boxes"]
    return [
        SamplePhoto(
            "quokka",
            image,
            "a quokka standing on the ground",
            "imgaug",
            tuple((b["x1"], b["y1"], b["x2"], b["y2"]) for b in boxes),
            tuple(b["label"] for b in boxes),
        )
    ]


def sample_photos() -> list[SamplePhoto]:
    """Every sample photo whose package is installed, in a fixed order."""
    return _skimage_photos() + _matplotlib_photos() + _imgaug_photos()


def _save(image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def hard_variants(out_dir: str | Path) -> list[SamplePhoto]:
    """The sample photos plus files that break naive loaders, written under ``out_dir``.

    - ``quokka_exif6.jpg``: the quokka's pixels stored turned a quarter, with EXIF orientation 6 (a
      phone photo): only an EXIF-aware reader sees the upright photo its box belongs to;
    - ``coffee_rgba.png``: left half fully transparent; ``coins_16bit.png``: 16-bit grayscale;
    - ``grace_hopper_palette.png``: 64-colour palette; ``astronaut_97x61.png``, ``rocket_640x41.jpg``:
      odd and extreme aspect ratios (scaled, so boxes would scale too).
    Grayscale (``camera``, ``coins``) and RGBA (``horse``) files are among the originals already.
    """
    from PIL import ExifTags, Image

    out = Path(out_dir)
    photos = {p.name: p for p in sample_photos()}
    variants = list(photos.values())
    if "quokka" in photos:
        quokka = photos["quokka"]
        with Image.open(quokka.path) as image:
            exif = Image.Exif()
            exif[ExifTags.Base.Orientation] = 6  # "rotate 90 clockwise to display"
            stored = image.transpose(Image.Transpose.ROTATE_90)
            path = _save(stored, out / "quokka_exif6.jpg", exif=exif, quality=95)
        variants.append(
            SamplePhoto("quokka_exif6", path, quokka.caption, "imgaug, EXIF", quokka.boxes, quokka.labels)
        )
    derived = {
        "coffee": ("coffee_rgba.png", _half_transparent),
        "coins": ("coins_16bit.png", lambda im: im.convert("I").point(lambda v: v * 257).convert("I;16")),
        "grace_hopper": ("grace_hopper_palette.png", lambda im: im.convert("RGB").quantize(64)),
        "astronaut": ("astronaut_97x61.png", lambda im: im.resize((97, 61))),
        "rocket": ("rocket_640x41.jpg", lambda im: im.resize((640, 41))),
    }
    for name, (file, make) in derived.items():
        if name in photos:
            with Image.open(photos[name].path) as image:
                path = _save(make(image), out / file)
            variants.append(SamplePhoto(Path(file).stem, path, photos[name].caption, photos[name].source))
    return variants


def _half_transparent(image):
    from PIL import Image

    rgba = image.convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width // 2, rgba.height))
    rgba.putalpha(alpha)
    return rgba
