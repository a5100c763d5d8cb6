"""Scenes of the synthetic world: the knobs, the categories, how objects are placed and drawn.

A scene is pure data (objects with shape, colour, size word and a tight pixel box); rendering turns it
into a PIL image. Everything random comes from one numpy Generator per image, so any image can be
regenerated alone from (seed, split, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
SIZE_WORDS = ("small", "large")
BACKGROUNDS = ("plain", "noisy", "textured")

# Saturated, well separated colours; backgrounds are low-saturation greys, so never confused with them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 210, 35),
    "purple": (140, 55, 185),
    "orange": (245, 130, 25),
    "pink": (245, 120, 185),
    "cyan": (35, 195, 205),
    "brown": (125, 75, 35),
}


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon in unit coordinates (y down), first vertex at ``start_deg``."""
    return [
        (
            radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
            radius * math.sin(math.radians(start_deg + 360.0 * k / n)),
        )
        for k in range(n)
    ]


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    outer = _regular(points)
    inner_pts = _regular(points, inner, -90.0 + 180.0 / points)
    return [p for pair in zip(outer, inner_pts, strict=True) for p in pair]


def _cross(arm: float = 0.33) -> list[tuple[float, float]]:
    """A plus sign: one arm's three corners, turned four times by 90 degrees."""
    points = [(-arm, -1.0), (arm, -1.0), (arm, -arm)]
    for _ in range(3):
        points += [(-y, x) for x, y in points[-3:]]
    return points


# Outlines in unit coordinates: the shape spans about [-1, 1] on both axes. The circle's 32-gon is only
# its COCO segmentation; it is drawn as a true ellipse.
SHAPES: dict[str, list[tuple[float, float]]] = {
    "circle": _regular(32),
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "cross": _cross(),
    "diamond": [(0.0, -1.0), (0.65, 0.0), (0.0, 1.0), (-0.65, 0.0)],
    "hexagon": _regular(6),
    "pentagon": _regular(5),
}


@dataclass
class SyntheticWorldConfig:
    """Every knob of the synthetic world. Sizes are fractions of the image's shorter side."""

    seed: int = field(default=0, metadata={"help": "World seed; images are a pure function of it."})
    image_size: int = field(default=128, metadata={"help": "Longer image side in pixels."})
    min_aspect: float = field(default=1.0, metadata={"help": "Smallest width/height ratio."})
    max_aspect: float = field(default=1.0, metadata={"help": "Largest width/height ratio."})
    num_train: int = field(default=2000, metadata={"help": "Images in the train split."})
    num_val: int = field(default=200, metadata={"help": "Images in the val split."})
    num_test: int = field(default=200, metadata={"help": "Images in the test split."})
    min_objects: int = field(default=2, metadata={"help": "Fewest objects per image."})
    max_objects: int = field(default=5, metadata={"help": "Most objects per image."})
    shapes: list[str] = field(
        default_factory=lambda: ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon"],
        metadata={"help": f"Shapes used, from {sorted(SHAPES)}."},
    )
    colours: list[str] = field(
        default_factory=lambda: ["red", "green", "blue", "yellow", "purple", "orange"],
        metadata={"help": f"Colours used, from {sorted(PALETTE)}."},
    )
    min_object_size: float = field(default=0.14, metadata={"help": "Smallest object side."})
    max_object_size: float = field(default=0.36, metadata={"help": "Largest object side."})
    max_overlap: float = field(default=0.05, metadata={"help": "Largest IoU between two objects."})
    backgrounds: list[str] = field(
        default_factory=lambda: list(BACKGROUNDS), metadata={"help": f"Background kinds from {BACKGROUNDS}."}
    )
    clutter: float = field(default=0.3, metadata={"help": "0..1 strength of background noise/texture."})
    distractor: float = field(
        default=0.5,
        metadata={"help": "Chance that a new object shares the shape or the colour of an existing one."},
    )
    duplicate: float = field(
        default=0.2, metadata={"help": "Chance that a new object repeats an existing colour+shape."}
    )
    colour_jitter: float = field(default=0.05, metadata={"help": "Std of per-object RGB jitter (x255)."})
    size_word_prob: float = field(
        default=0.3, metadata={"help": "Chance a region phrase names the size when not needed."}
    )
    referring_text_prob: float = field(
        default=0.5,
        metadata={
            "help": "Chance that an object's pretraining region text is one of its referring expressions "
            "(position, relation) rather than its bare phrase, as VESL's enriched captions describe regions "
            "in context."
        },
    )
    images_per_shard: int = field(default=256, metadata={"help": "WebDataset samples per tar shard."})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of every written image."})

    def __post_init__(self) -> None:
        def require(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticWorldConfig.{name}={getattr(self, name)!r}: {expected}")

        require("image_size", self.image_size >= 16, "must be >= 16")
        aspects_ok = 0.25 <= self.min_aspect <= self.max_aspect <= 4.0
        require("min_aspect", aspects_ok, "need 0.25 <= min_aspect <= max_aspect <= 4")
        objects_ok = 1 <= self.min_objects <= self.max_objects <= 20
        require("min_objects", objects_ok, "need 1 <= min_objects <= max_objects <= 20")
        sizes_ok = 0.02 <= self.min_object_size < self.max_object_size <= 0.9
        require("min_object_size", sizes_ok, "need 0.02 <= min_object_size < max_object_size <= 0.9")
        for name in ("max_overlap", "clutter", "distractor", "duplicate", "colour_jitter", "size_word_prob",
                     "referring_text_prob"):
            require(name, 0.0 <= getattr(self, name) <= 1.0, "must be in [0, 1]")
        require("images_per_shard", self.images_per_shard >= 1, "must be >= 1")
        require("jpeg_quality", 1 <= self.jpeg_quality <= 100, "must be in [1, 100]")
        for split in SPLITS:  # image ids reserve a million per split
            require(f"num_{split}", 0 <= self.num_images(split) < 1_000_000, "must be in [0, 1e6)")
        for name, known, least in (
            ("shapes", SHAPES, 2),
            ("colours", PALETTE, 2),
            ("backgrounds", BACKGROUNDS, 1),
        ):
            values = getattr(self, name)
            ok = len(set(values)) == len(values) >= least and set(values) <= set(known)
            require(name, ok, f"need >= {least} distinct of {sorted(known)}")

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


@dataclass(frozen=True)
class Category:
    """A colour-shape class; ids are 1-based in colour-major order of the configured lists."""

    id: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def categories(cfg: SyntheticWorldConfig) -> list[Category]:
    """All colour x shape classes of a world, with stable ids."""
    return [
        Category(1 + i * len(cfg.shapes) + j, colour, shape)
        for i, colour in enumerate(cfg.colours)
        for j, shape in enumerate(cfg.shapes)
    ]


@dataclass
class SceneObject:
    """One drawn object. ``(cx, cy, half)`` place its outline; ``box`` is the tight pixel box ``(x1, y1,
    x2, y2)`` of its drawn pixels (x2, y2 exclusive); ``polygon`` its outline in pixels (flat x, y list,
    COCO segmentation style)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    half: float
    box: tuple[int, int, int, int]
    polygon: list[float]
    area: int
    rgb: tuple[int, int, int]

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def box_center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass
class Scene:
    """``unplaced`` counts objects drawn for the scene that found no free spot (the scene has fewer)."""

    width: int
    height: int
    background: str
    objects: list[SceneObject]
    unplaced: int = 0


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The one random stream of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pick_category(cfg: SyntheticWorldConfig, rng: np.random.Generator, placed: list[tuple[str, str]]):
    """A (colour, shape) for the next object: a repeat, a near miss (distractor) or a fresh draw."""
    if placed and rng.random() < cfg.duplicate:
        return placed[rng.integers(len(placed))]
    if placed and rng.random() < cfg.distractor:
        colour, shape = placed[rng.integers(len(placed))]
        if rng.random() < 0.5:
            return colour, str(rng.choice([s for s in cfg.shapes if s != shape]))
        return str(rng.choice([c for c in cfg.colours if c != colour])), shape
    return str(rng.choice(cfg.colours)), str(rng.choice(cfg.shapes))


def _object_side(cfg: SyntheticWorldConfig, rng: np.random.Generator, size: str, short_side: int) -> float:
    """Side in pixels: small objects in the lower 40% of the range, large in the upper 40%, so the size
    word is visibly true."""
    lo, hi = cfg.min_object_size, cfg.max_object_size
    frac = rng.uniform(lo, lo + 0.4 * (hi - lo)) if size == "small" else rng.uniform(hi - 0.4 * (hi - lo), hi)
    return frac * short_side


def _outline(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    return [(cx + half * x, cy + half * y) for x, y in SHAPES[shape]]


def _draw_mask(shape: str, width: int, height: int, cx: float, cy: float, half: float) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=255)
    else:
        draw.polygon(_outline(shape, cx, cy, half), fill=255)
    return mask


def sample_scene(cfg: SyntheticWorldConfig, rng: np.random.Generator) -> Scene:
    """Place 'min_objects..max_objects' objects whose boxes overlap at most ``cfg.max_overlap`` (IoU)."""
    aspect = rng.uniform(cfg.min_aspect, cfg.max_aspect)
    if aspect >= 1.0:
        width, height = cfg.image_size, max(16, round(cfg.image_size / aspect))
    else:
        width, height = max(16, round(cfg.image_size * aspect)), cfg.image_size
    short = min(width, height)
    background = str(rng.choice(cfg.backgrounds))
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[SceneObject] = []
    unplaced = 0
    for _ in range(n):
        colour, shape = _pick_category(cfg, rng, [(o.colour, o.shape) for o in objects])
        size = str(rng.choice(SIZE_WORDS))
        half = _object_side(cfg, rng, size, short) / 2
        for _attempt in range(30):
            cx, cy = rng.uniform(half + 1, width - half - 1), rng.uniform(half + 1, height - half - 1)
            mask = _draw_mask(shape, width, height, cx, cy, half)
            box = mask.getbbox()
            if box is not None and all(_box_iou(box, o.box) <= cfg.max_overlap for o in objects):
                break
        else:
            unplaced += 1  # no room left: the scene keeps fewer objects
            continue
        jitter = rng.normal(0.0, cfg.colour_jitter * 255.0, 3)
        r, g, b = (int(v) for v in np.clip(np.array(PALETTE[colour]) + jitter, 0, 255))
        polygon = [round(v, 2) for point in _outline(shape, cx, cy, half) for v in point]
        area = int(np.count_nonzero(np.asarray(mask)))
        objects.append(SceneObject(shape, colour, size, cx, cy, half, box, polygon, area, (r, g, b)))
    return Scene(width, height, background, objects, unplaced)


def _background(kind: str, width: int, height: int, clutter: float, rng: np.random.Generator) -> Image.Image:
    """A low-saturation grey canvas; 'noisy' adds pixel noise, 'textured' faint strokes and blobs."""
    tone = rng.uniform(165, 235)
    tint = rng.normal(0.0, 6.0, 3)
    canvas = np.broadcast_to(tone + tint, (height, width, 3)).copy()
    if kind == "noisy":
        canvas += rng.normal(0.0, 8.0 + 40.0 * clutter, (height, width, 1))  # grey noise: no hue to confuse
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if kind == "textured":
        draw = ImageDraw.Draw(image)
        for _ in range(int(4 + 40 * clutter)):
            grey = int(np.clip(tone + rng.normal(0.0, 25.0 + 40.0 * clutter), 0, 255))
            x1, x2 = rng.uniform(0, width, 2)
            y1, y2 = rng.uniform(0, height, 2)
            if rng.random() < 0.6:
                draw.line((x1, y1, x2, y2), fill=(grey,) * 3, width=int(rng.integers(1, 3)))
            else:
                r = rng.uniform(1, 0.05 * min(width, height) + 2)
                draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=(grey,) * 3)
    return image


def render_scene(scene: Scene, cfg: SyntheticWorldConfig, rng: np.random.Generator) -> Image.Image:
    """Draw the scene, objects in list order (later ones on top), as an RGB image."""
    image = _background(scene.background, scene.width, scene.height, cfg.clutter, rng)
    for obj in scene.objects:
        image.paste(
            obj.rgb, (0, 0), _draw_mask(obj.shape, scene.width, scene.height, obj.cx, obj.cy, obj.half)
        )
    return image
