"""The synthetic world: procedurally drawn shape scenes with known boxes, captions, region phrases and
referring expressions, written in every data format of docs/data_formats.md.

It exists so the whole pipeline (pretraining, VESL, LLaVA finetuning, evaluation) runs and *learns*
anywhere in minutes. Objects come with distractors (same shape other colour, same colour other shape,
repeated colour+shape), so an image's caption cannot tell which object sits in which box: region
recognition needs the region path, which is what CLOC adds over CLIP.

Image ``index`` of ``split`` is a pure function of ``(cfg, split, index)`` (see ``generate_sample``).
Scene geometry lives in ``synthetic_scene``, language in ``synthetic_text``, file formats in
``synthetic_writers``; this module ties them together.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from transformers import HfArgumentParser

from ..box_text import format_box
from ..visualize import draw_boxes, image_grid
from .synthetic_scene import (
    SPLITS,
    Scene,
    SyntheticWorldConfig,
    categories,
    image_rng,
    render_scene,
    sample_scene,
)
from .synthetic_text import (
    Segment,
    article,
    caption_segments,
    choose_expressions,
    expression_segments,
    join_segments,
    landmark_index,
    referring_expressions,
    region_phrase,
)
from .synthetic_writers import (
    REFER_DATASETS,
    CocoWriter,
    FlickrWriter,
    FormatWriter,
    ImageFolderWriter,
    LlavaWriter,
    ReferWriter,
    ShardWriter,
    WorldSample,
    write_bytes_atomic,
    write_json_atomic,
)
from .tokenizer import train_world_tokenizer

__all__ = [
    "FORMATS",
    "SPLITS",
    "SyntheticWorldConfig",
    "WorldSample",
    "categories",
    "generate_sample",
    "image_id",
    "iter_split",
    "load_world_manifest",
    "preview",
    "sample_key",
    "write_world",
]

FORMATS = ("shards", "refer", "flickr30k", "llava", "coco", "tokenizer")
# Per dataset: may it use location words, which sentence style, which expression kinds come first.
_REFER_STYLES = {
    "refcoco": (True, "short", ()),
    "refcoco+": (False, "short", ()),  # like the real RefCOCO+: no location words at all
    "refcocog": (True, "long", ("relation", "position")),  # longer, more relational descriptions
}
_GROUNDING_QUESTIONS = ("Where is {}?", "Give the box of {}.", "Locate {}.")
_REFERRING_QUESTIONS = ("What is in {}?", "What object is at {}?")
_PREVIEW_IMAGES = 16


def sample_key(split: str, index: int) -> str:
    """WebDataset key and file stem; no dots, as WebDataset splits keys at the first dot."""
    return f"{split}_{index:06d}"


def image_id(split: str, index: int) -> int:
    """Integer id used by the COCO-style layouts: 1000000 * (split number + 1) + index."""
    return (SPLITS.index(split) + 1) * 1_000_000 + index


def _normalised_box(scene: Scene, i: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = scene.objects[i].box
    return (x1 / scene.width, y1 / scene.height, x2 / scene.width, y2 / scene.height)


def _conversation(
    scene: Scene, caption: str, phrases: list[str], refcoco: dict[int, list[str]], rng: np.random.Generator
) -> list[tuple[str, str]]:
    """A caption turn, then up to three grounding ("where is the red circle on the left?" -> box) or
    referring ("what is in [..]?" -> "a small red circle") turns about random objects."""
    turns = [("Describe the image.", caption)]
    for i in rng.permutation(len(scene.objects))[:3]:
        box_text = format_box(_normalised_box(scene, int(i)))
        sentences = refcoco.get(int(i))
        if sentences and rng.random() < 0.5:
            question = str(rng.choice(_GROUNDING_QUESTIONS)).format(sentences[rng.integers(len(sentences))])
            turns.append((question, box_text))
        else:
            answer = f"{article(phrases[i])} {phrases[i]}"
            turns.append((str(rng.choice(_REFERRING_QUESTIONS)).format(box_text), answer))
    return turns


def _referring_sentences(
    scene: Scene, rng: np.random.Generator
) -> tuple[dict[str, list[tuple[int, list[str]]]], list[list[Segment]]]:
    """1-3 sentences per object and refer dataset, as (object index, sentences) lists; plus the first
    RefCOCO expression of each object as segments, for Flickr sentences."""
    targets = range(len(scene.objects))
    candidates = {loc: [referring_expressions(scene, t, loc) for t in targets] for loc in (True, False)}
    refs: dict[str, list[tuple[int, list[str]]]] = {}
    flickr: list[list[Segment]] = []
    for dataset, (allow_location, style, prefer) in _REFER_STYLES.items():
        refs[dataset] = []
        for target in targets:
            chosen = choose_expressions(
                candidates[allow_location][target], int(rng.integers(1, 4)), rng, prefer
            )
            segments = [expression_segments(e, target, landmark_index(scene, e), style, rng) for e in chosen]
            if not segments:
                continue  # no true and unique expression in this dataset's grammar (counted by the writer)
            refs[dataset].append((target, [join_segments(s) for s in segments]))
            if dataset == "refcoco":
                flickr.append(segments[0])
    return refs, flickr


def _region_texts(
    phrases: list[str], refs: dict[str, list[tuple[int, list[str]]]], prob: float, rng: np.random.Generator
) -> list[str]:
    """Each object's one pretraining text: with chance ``prob`` a referring sentence of any refer dataset
    (so the region and grounding losses see position and relation words), else its phrase.

    One text per box, never two: a box listed twice would be its own negative in the region loss."""
    sentences: dict[int, list[str]] = {}
    for dataset_refs in refs.values():
        for target, texts in dataset_refs:
            sentences.setdefault(target, []).extend(texts)
    texts = []
    for i, phrase in enumerate(phrases):
        use_sentence = rng.random() < prob and sentences.get(i)
        texts.append(str(rng.choice(sentences[i])) if use_sentence else phrase)
    return texts


def generate_sample(cfg: SyntheticWorldConfig, split: str, index: int) -> WorldSample:
    """Image ``index`` of ``split`` with all its texts, drawn from its own random stream only."""
    rng = image_rng(cfg.seed, split, index)
    scene = sample_scene(cfg, rng)
    buffer = io.BytesIO()
    render_scene(scene, cfg, rng).save(buffer, format="JPEG", quality=cfg.jpeg_quality)
    phrases = [region_phrase(scene, i, rng, cfg.size_word_prob) for i in range(len(scene.objects))]
    caption_segs = caption_segments(scene, phrases, rng)
    caption = join_segments(caption_segs)
    refs, flickr_refs = _referring_sentences(scene, rng)
    flickr = [caption_segs] + [flickr_refs[k] for k in rng.permutation(len(flickr_refs))[:4]]
    conversation = _conversation(scene, caption, phrases, dict(refs["refcoco"]), rng)
    return WorldSample(
        split=split,
        index=index,
        key=sample_key(split, index),
        image_id=image_id(split, index),
        scene=scene,
        jpeg=buffer.getvalue(),
        caption=caption,
        phrases=phrases,
        refs=refs,
        flickr_sentences=flickr,
        conversation=conversation,
        # drawn last, so the texts above do not depend on this setting
        region_texts=_region_texts(phrases, refs, cfg.referring_text_prob, rng),
    )


def iter_split(cfg: SyntheticWorldConfig, split: str) -> Iterator[WorldSample]:
    for index in range(cfg.num_images(split)):
        yield generate_sample(cfg, split, index)


def sample_texts(sample: WorldSample) -> list[str]:
    """Every string the sample puts in any format (the tokenizer's training text)."""
    texts = [sample.caption, *sample.phrases]
    texts += [s for refs in sample.refs.values() for _, sentences in refs for s in sentences]
    texts += [t for turn in sample.conversation for t in turn]
    return texts


def preview(samples: Sequence[WorldSample], scale: int = 2) -> Image.Image:
    """A grid of samples with their ground-truth boxes and region phrases, for a person to check."""
    tiles = []
    for s in samples:
        image = Image.open(io.BytesIO(s.jpeg)).convert("RGB")
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        boxes = [[v * scale for v in o.box] for o in s.scene.objects]
        tiles.append(draw_boxes(image, boxes, s.phrases))
    return image_grid(tiles, columns=4)


def _formats(formats: str | Sequence[str]) -> list[str]:
    chosen = list(FORMATS) if formats == "all" else [formats] if isinstance(formats, str) else list(formats)
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown world format(s) {unknown}; expected 'all' or some of {FORMATS}")
    return chosen


def write_world(
    out_dir: str | Path, cfg: SyntheticWorldConfig | None = None, formats: str | Sequence[str] = "all"
) -> dict:
    """Generate the world and write the chosen formats under ``out_dir``; returns the manifest, which
    is also saved as ``out_dir/world.json``. Layout (docs/synthetic_world.md):
    ``images/{split}/KEY.jpg`` always, ``shards/``, ``refer/``, ``flickr30k_entities/``, ``llava/``,
    ``coco/``, ``tokenizer/``, ``preview.png``."""
    cfg = cfg or SyntheticWorldConfig()
    out = Path(out_dir)
    chosen = _formats(formats)
    cats = categories(cfg)
    images = ImageFolderWriter(out)
    writers: dict[str, FormatWriter] = {"images": images}
    if "shards" in chosen:
        writers["shards"] = ShardWriter(out, cfg.images_per_shard)
    if "refer" in chosen:
        writers["refer"] = ReferWriter(out, images, cats)
    if "flickr30k" in chosen:
        writers["flickr30k"] = FlickrWriter(out, images)
    if "llava" in chosen:
        writers["llava"] = LlavaWriter(out)
    if "coco" in chosen:
        writers["coco"] = CocoWriter(out, images, cats)

    texts: list[str] = []
    shown: list[WorldSample] = []
    split_counts = {}
    for split in SPLITS:
        objects = unplaced = 0
        for sample in tqdm(iter_split(cfg, split), total=cfg.num_images(split), desc=f"world {split}"):
            for writer in writers.values():
                writer.add(sample)
            objects += len(sample.scene.objects)
            unplaced += sample.scene.unplaced
            texts += sample_texts(sample)
            if split == "train" and len(shown) < _PREVIEW_IMAGES:
                shown.append(sample)
        split_counts[split] = {
            "images": cfg.num_images(split),
            "objects": objects,
            "objects_unplaced": unplaced,
        }
    format_counts: dict[str, dict[str, int]] = {name: writer.close() for name, writer in writers.items()}

    if "tokenizer" in chosen:
        tok = train_world_tokenizer(texts, out / "tokenizer")
        format_counts["tokenizer"] = {"vocab_size": len(tok)}
    if shown:
        buffer = io.BytesIO()
        preview(shown).save(buffer, format="PNG")
        write_bytes_atomic(out / "preview.png", buffer.getvalue())
    manifest = {
        "format_version": 1,
        "config": asdict(cfg),
        "categories": [{"id": c.id, "name": c.name, "colour": c.colour, "shape": c.shape} for c in cats],
        "splits": split_counts,
        "formats": format_counts,
        "refer_datasets": REFER_DATASETS,
    }
    write_json_atomic(out / "world.json", manifest)
    return manifest


def load_world_manifest(out_dir: str | Path) -> dict:
    """The ``world.json`` written by ``write_world``."""
    path = Path(out_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no world manifest; run scripts/make_synthetic.py first")
    return json.loads(path.read_text())


@dataclass
class OutputArguments:
    out: str = field(metadata={"help": "Directory to write the world into."})
    formats: list[str] = field(
        default_factory=lambda: ["all"], metadata={"help": f"'all' or some of {list(FORMATS)}."}
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((OutputArguments, SyntheticWorldConfig))
    output, cfg = parser.parse_args_into_dataclasses(args=argv)
    formats = "all" if output.formats == ["all"] else output.formats
    manifest = write_world(output.out, cfg, formats)
    print(
        json.dumps(
            {"out": output.out, "splits": manifest["splits"], "formats": manifest["formats"]}, indent=1
        )
    )
    return manifest
