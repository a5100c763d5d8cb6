"""What the demo page computes, as plain functions: the page calls them, and so do the tests for the
answers the page must show.

A *tower* is one pretrained encoder (CLOC, or the CLIP-only baseline) with the LLaVA finetuned on it
when there is one. Everything goes through the evaluation code's own functions (region embeddings,
grounding head, MLLM grounding and referring), so the page answers exactly what ``cloc-mllm eval``
scores. Boxes from the person are pixel xyxy on the original image; boxes given back are normalised
xyxy on it (and pixels, for reading). A missing checkpoint or a bad image raises :class:`DemoError`
with a message meant for the person at the page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from cloc_mllm.visualize import draw_boxes

DEFAULT_RUN = "runs/quickstart"  # the main job's run directory (cloc-mllm pipeline --profile quick)
TOWERS = ("CLOC", "CLIP")
TOP_K = 5
MAX_NEW_TOKENS = 24  # the pipeline's answer length: a 0-999 box is ~20 tokens
HEAD_COLOUR, LLAVA_COLOUR, BOX_COLOUR = (230, 25, 75), (0, 130, 200), (245, 130, 48)
DISPLAY_SIDE = 384  # small world images are enlarged (nearest) so boxes and labels stay legible

Box = Sequence[float]


class DemoError(Exception):
    """Something the person at the demo can fix: a missing checkpoint, an unreadable image, an empty box."""


@dataclass
class Tower:
    """One encoder and, if found, its LLaVA. ``region_head`` None is the model's trained head (CLOC's
    Prompter); the CLIP baseline's regions are RoIAlign over its tokens, and it has no grounding head."""

    name: str
    encoder_dir: Path
    model: torch.nn.Module
    tokenizer: object
    transform: object  # data.transforms.ImageTransform
    region_head: str | None
    grounding_head: bool
    mllm: object = None
    processor: object = None
    mllm_dir: Path | None = None

    @property
    def region_prompts(self) -> bool:
        """Whether the LLaVA reads a referred box as a ``<region>`` token (else as ``[x1, y1, x2, y2]`` text)."""
        return bool(self.mllm is not None and getattr(self.mllm.config, "region_prompts", False))


@dataclass
class DemoModels:
    towers: list[Tower]
    phrases: list[str]  # candidates of "nearest phrases"
    examples: list[str] = field(default_factory=list)  # image paths offered on the page
    notes: list[str] = field(default_factory=list)  # what was looked for and not found

    def tower(self, name: str) -> Tower:
        for tower in self.towers:
            if tower.name == name:
                return tower
        raise DemoError(f"no {name} tower loaded (have {[t.name for t in self.towers]})")


# ---- locating and loading -----------------------------------------------------------------------


def encoder_checkpoint(path: str | Path) -> Path:
    """A ``save_pretrained`` directory, or a pretraining output directory -> its last checkpoint's model."""
    from cloc_mllm.training.checkpoint import MODEL_DIR, list_checkpoints

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints and (checkpoints[-1] / MODEL_DIR / "config.json").is_file():
        return checkpoints[-1] / MODEL_DIR
    if not path.exists():
        raise DemoError(f"{path}: no such directory (a CLOC checkpoint or a pretraining output directory)")
    raise DemoError(f"{path}: neither a saved model (config.json) nor a pretraining run with a checkpoint")


def run_layout(run_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """Tower name -> (pretraining dir, LLaVA dir) where the main job writes them."""
    run = Path(run_dir)
    return {
        name: (run / "pretrain" / name.lower(), run / "finetune" / f"llava_{name.lower()}") for name in TOWERS
    }


def _model_kind(path: Path) -> str:
    from cloc_mllm.eval.runner import model_kind

    try:
        return model_kind(path)
    except (FileNotFoundError, ValueError) as error:
        raise DemoError(str(error)) from error


def _is_saved_model(path: Path) -> bool:
    """A full save (config.json) or a LoRA adapter dir (the ci profile's LLaVAs)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def load_tower(
    name: str,
    encoder: str | Path,
    mllm_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    image_mode: str = "resize",
) -> Tower:
    """Load one tower; ``name`` CLOC needs a CLOC checkpoint, CLIP takes a CLIP-only CLOC run or an HF CLIP."""
    from cloc_mllm import CLOCModel
    from cloc_mllm.data.tokenizer import load_tokenizer
    from cloc_mllm.eval.inputs import encoder_transform

    if name not in TOWERS:
        raise DemoError(f"unknown tower {name!r}; expected one of {TOWERS}")
    encoder_dir = encoder_checkpoint(encoder)
    kind = _model_kind(encoder_dir)
    if kind == "mllm":
        raise DemoError(f"{encoder_dir}: a LLaVA, not an encoder; pass it as --llava-{name.lower()}")
    if name == "CLOC" and kind != "cloc":
        raise DemoError(f"{encoder_dir}: a plain CLIP has no Prompter or grounding head; pass it as --clip")
    tokenizer_dir = Path(tokenizer) if tokenizer else encoder_dir
    if not _has_tokenizer(tokenizer_dir):
        raise DemoError(f"{tokenizer_dir}: no tokenizer; pass --tokenizer DIR (the world's tokenizer/)")
    model = CLOCModel.from_pretrained(encoder_dir) if kind == "cloc" else CLOCModel.from_clip(encoder_dir)
    model = model.to(device).eval()
    tower = Tower(
        name=name,
        encoder_dir=encoder_dir,
        model=model,
        tokenizer=load_tokenizer(tokenizer_dir),
        transform=encoder_transform(model, encoder_dir, image_mode),
        # as the main job evaluates them: the CLIP baseline's Prompter saw no region loss
        region_head="clip_roialign" if name == "CLIP" else None,
        grounding_head=name == "CLOC",
    )
    if mllm_dir is not None:
        from cloc_mllm.mllm.inference import load_mllm

        mllm_dir = Path(mllm_dir)
        if _model_kind(mllm_dir) != "mllm":
            raise DemoError(f"{mllm_dir}: not a LLaVA directory")
        tower.mllm, tower.processor = load_mllm(mllm_dir, device=device)
        tower.mllm_dir = mllm_dir
    return tower


def world_phrases(run_dir: str | Path | None = None) -> list[str]:
    """The world's class names ("red circle", ...): the run's own world when it has one, else the default."""
    meta = Path(run_dir) / "world" / "world.json" if run_dir else None
    if meta is not None and meta.is_file():
        return [c["name"] for c in json.loads(meta.read_text())["categories"]]
    from cloc_mllm.data.synthetic import SyntheticWorldConfig
    from cloc_mllm.data.synthetic_scene import categories

    return [c.name for c in categories(SyntheticWorldConfig())]


def read_phrases(spec: str) -> list[str]:
    """A file with one phrase a line, or a comma-separated list."""
    path = Path(spec)
    lines = path.read_text().splitlines() if path.is_file() else spec.split(",")
    phrases = list(dict.fromkeys(p.strip() for p in lines if p.strip()))
    if not phrases:
        raise DemoError(f"--phrases {spec!r}: no phrases")
    return phrases


def example_images(run_dir: str | Path | None, count: int = 4) -> list[str]:
    """A few of the run's test images (the world's held-out split)."""
    folder = Path(run_dir) / "world" / "images" / "test" if run_dir else None
    if folder is None or not folder.is_dir():
        return []
    return [str(p) for p in sorted(folder.glob("*.jpg"))[:count]]


def load_demo(
    run_dir: str | Path | None = DEFAULT_RUN,
    cloc: str | Path | None = None,
    clip: str | Path | None = None,
    llava_cloc: str | Path | None = None,
    llava_clip: str | Path | None = None,
    tokenizer: str | Path | None = None,
    phrases: Sequence[str] | None = None,
    device: str | None = None,
    image_mode: str = "resize",
) -> DemoModels:
    """Every tower found: explicit paths must exist; the run directory's are used when present."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    layout = run_layout(run_dir) if run_dir else {}
    given = {"CLOC": (cloc, llava_cloc), "CLIP": (clip, llava_clip)}
    if tokenizer is None and run_dir and _has_tokenizer(Path(run_dir) / "world" / "tokenizer"):
        tokenizer = Path(run_dir) / "world" / "tokenizer"
    towers, notes = [], []
    for name in TOWERS:
        encoder, mllm = given[name]
        if encoder is None and name in layout:
            try:
                encoder = encoder_checkpoint(layout[name][0])
            except DemoError as missing:
                notes.append(f"{name}: {missing}")
        if encoder is None:
            continue
        if mllm is None and name in layout and _is_saved_model(layout[name][1]):
            mllm = layout[name][1]
        elif mllm is None:
            notes.append(f"{name}: no LLaVA" + (f" at {layout[name][1]}" if name in layout else ""))
        towers.append(load_tower(name, encoder, mllm, tokenizer, device, image_mode))
    if not towers:
        raise DemoError(
            f"no CLOC or CLIP checkpoint found under {run_dir}/pretrain/: run the main job first "
            f"(cloc-mllm pipeline --profile quick writes {DEFAULT_RUN}) or pass --cloc DIR / --clip DIR"
            + (f" [{'; '.join(notes)}]" if notes else "")
        )
    return DemoModels(towers, list(phrases or world_phrases(run_dir)), example_images(run_dir), notes)


# ---- inputs -------------------------------------------------------------------------------------


def read_image(image_path: str | Path | None) -> Image.Image:
    """The RGB image, or a DemoError saying why not."""
    from cloc_mllm.eval.inputs import open_image

    if not image_path:
        raise DemoError("pick or upload an image first")
    image = open_image(image_path)
    if image is None:
        raise DemoError(f"{Path(image_path).name}: not a readable image (PNG, JPEG, WebP, ...)")
    return image


def check_box(box: Box | None, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Pixel xyxy in any corner order -> ordered and clipped to the (width, height) image; no empty box."""
    if box is None or len(box) != 4 or any(v is None for v in box):
        raise DemoError("draw a box first: click two opposite corners on the image (or type x1, y1, x2, y2)")
    width, height = size
    x1, x2 = sorted(min(max(float(v), 0.0), width) for v in (box[0], box[2]))
    y1, y2 = sorted(min(max(float(v), 0.0), height) for v in (box[1], box[3]))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise DemoError(f"the box {[x1, y1, x2, y2]} is empty inside the {width}x{height} image")
    return (x1, y1, x2, y2)


def to_pixels(box: Box, size: tuple[int, int]) -> list[int]:
    """Normalised xyxy -> rounded pixel xyxy on a (width, height) image."""
    return [round(float(v) * s) for v, s in zip(box, (*size, *size), strict=True)]


# ---- box -> phrases, box -> LLaVA's words ---------------------------------------------------------


@torch.no_grad()
def nearest_phrases(
    tower: Tower, image_path: str | Path, box: Box, phrases: Sequence[str], k: int = TOP_K
) -> list[tuple[str, float]]:
    """The ``k`` phrases whose text embeddings are closest (cosine) to the region embedding of ``box``."""
    from cloc_mllm.eval.encoder import encode_texts, region_features
    from cloc_mllm.eval.inputs import ImageRef

    box = check_box(box, read_image(image_path).size)
    (region,) = region_features(
        tower.model, [ImageRef(str(image_path))], lambda _: [box], tower.transform, 1, tower.region_head
    )  # (1, D)
    texts = encode_texts(tower.model, tower.tokenizer, list(phrases)).cpu()  # (P, D)
    scores = texts @ region[0]  # (P,)
    top = scores.topk(min(k, len(phrases)))
    return [(phrases[i], round(float(s), 4)) for s, i in zip(top.values, top.indices, strict=True)]


def referring_answer(
    tower: Tower, image_path: str | Path, box: Box, max_new_tokens: int = MAX_NEW_TOKENS
) -> str | None:
    """The LLaVA's answer to "What is in <box>?" (a ``<region>`` token when it was trained with them)."""
    from cloc_mllm.eval.benchmarks import RegionTarget
    from cloc_mllm.eval.referring import referring_rows

    if tower.mllm is None:
        return None
    width, height = read_image(image_path).size
    target = RegionTarget("demo", str(image_path), check_box(box, (width, height)), (), "", width, height)
    (row,) = referring_rows(tower.mllm, tower.processor, [target], 1, max_new_tokens, tower.region_prompts)
    return row["answer"]


def describe_box(
    models: DemoModels, image_path: str | Path, box: Box, k: int = TOP_K, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict:
    """Per tower: the top-``k`` phrases with scores and the LLaVA's referring answer (None without one)."""
    size = read_image(image_path).size
    box = check_box(box, size)
    return {
        "box": [round(v, 1) for v in box],
        "image_size": list(size),
        "towers": {
            t.name: {
                "phrases": [[p, s] for p, s in nearest_phrases(t, image_path, box, models.phrases, k)],
                "llava_answer": referring_answer(t, image_path, box, max_new_tokens),
            }
            for t in models.towers
        },
    }


# ---- phrase -> boxes ----------------------------------------------------------------------------


@torch.no_grad()
def head_box(tower: Tower, image_path: str | Path, phrase: str) -> list[float] | None:
    """The grounding head's box for ``phrase`` (normalised xyxy, original image); None for CLIP."""
    from cloc_mllm.eval.benchmarks import GroundingItem
    from cloc_mllm.eval.encoder import grounding_head_rows

    if not tower.grounding_head:
        return None
    read_image(image_path)
    item = GroundingItem(key="demo", image_path=str(image_path), text=phrase, boxes=())
    (row,) = grounding_head_rows(tower.model, tower.tokenizer, [item], tower.transform)
    return row["boxes"][0]


def llava_grounding(
    tower: Tower, image_path: str | Path, phrase: str, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict | None:
    """The LLaVA's answer to "Where is {phrase}?" and its first box (None when it wrote none)."""
    from cloc_mllm.eval.benchmarks import GroundingItem
    from cloc_mllm.eval.mllm_grounding import mllm_grounding_rows

    if tower.mllm is None:
        return None
    read_image(image_path)
    item = GroundingItem(key="demo", image_path=str(image_path), text=phrase, boxes=())
    (row,) = mllm_grounding_rows(tower.mllm, tower.processor, [item], 1, max_new_tokens)
    return {"answer": row["answer"], "box": row["boxes"][0] if row["boxes"] else None}


def ground_phrase(
    models: DemoModels, image_path: str | Path, phrase: str, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict:
    """Per tower: the grounding head's box and the LLaVA's answered box, normalised and in pixels."""
    phrase = (phrase or "").strip()
    if not phrase:
        raise DemoError("type a phrase to ground, e.g. 'red circle'")
    size = read_image(image_path).size
    towers = {}
    for tower in models.towers:
        head = head_box(tower, image_path, phrase)
        llava = llava_grounding(tower, image_path, phrase, max_new_tokens)
        towers[tower.name] = {
            "grounding_head": None if head is None else {"box": head, "pixels": to_pixels(head, size)},
            "llava": None
            if llava is None
            else {**llava, "pixels": None if llava["box"] is None else to_pixels(llava["box"], size)},
        }
    return {"phrase": phrase, "image_size": list(size), "towers": towers}


# ---- pictures -----------------------------------------------------------------------------------


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` enlarged (nearest neighbour, integer factor) until its long side reaches ``side``."""
    factor = max(1, side // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def draw_grounding(image_path: str | Path, tower_result: dict) -> Image.Image:
    """The image (enlarged) with one tower's grounding-head box and LLaVA box drawn and labelled."""
    head, llava = tower_result["grounding_head"], tower_result["llava"]
    drawn = [("head", HEAD_COLOUR, head and head["box"]), ("LLaVA", LLAVA_COLOUR, llava and llava["box"])]
    drawn = [(label, colour, box) for label, colour, box in drawn if box is not None]
    return draw_boxes(
        display_image(read_image(image_path)),
        [box for _, _, box in drawn],
        [label for label, _, _ in drawn],
        [colour for _, colour, _ in drawn],
        normalized=True,
        width=3,
    )


def draw_box(image_path: str | Path, box: Box | None) -> Image.Image:
    """The image (enlarged) with the person's box, pixel xyxy on the original, drawn on it."""
    image = read_image(image_path)
    shown = display_image(image)
    if box is None:
        return shown
    box = check_box(box, image.size)
    normalised = [v / s for v, s in zip(box, (*image.size, *image.size), strict=True)]
    return draw_boxes(shown, [normalised], colours=[BOX_COLOUR], normalized=True, width=3)
