"""The synthetic world: deterministic by seed, knobs respected, every format written and parseable."""

import io
import json
import pickle
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.data.synthetic import (
    SyntheticWorldConfig,
    categories,
    generate_sample,
    write_world,
)
from cloc_mllm.data.synthetic_scene import image_rng, render_scene, sample_scene
from cloc_mllm.data.synthetic_text import resolve
from cloc_mllm.data.synthetic_writers import shard_record
from cloc_mllm.data.tokenizer import EOS_ID, load_tokenizer

TINY = dict(
    image_size=64, num_train=10, num_val=4, num_test=6, images_per_shard=4, min_aspect=0.75, max_aspect=1.33
)
LOCATION_WORDS = {"left", "right", "top", "bottom", "above", "below"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, write_world(out, SyntheticWorldConfig(**TINY))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    out, _ = world
    write_world(tmp_path / "again", SyntheticWorldConfig(**TINY))
    first, again = _files(out), _files(tmp_path / "again")
    assert first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    other = generate_sample(SyntheticWorldConfig(**{**TINY, "seed": 1}), "train", 0)
    assert other.jpeg != first["images/train/train_000000.jpg"]


def test_any_image_regenerates_alone_and_splits_differ(world):
    out, _ = world
    cfg = SyntheticWorldConfig(**TINY)
    sample = generate_sample(cfg, "train", 7)
    assert sample.jpeg == (out / "images/train/train_000007.jpg").read_bytes()
    digests = {p.read_bytes() for p in (out / "images").rglob("*.jpg")}
    assert len(digests) == 20  # no image repeats within or across splits
    record = json.loads(json.dumps(shard_record(sample)))
    assert record == json.loads(json.dumps(shard_record(generate_sample(cfg, "train", 7))))


def test_region_texts_mix_phrases_and_true_referring_sentences():
    """Each box gets exactly one pretraining text; at prob 1 it is one of that object's referring
    sentences (which resolve to it alone), at prob 0 its phrase; no other text moves with the knob."""
    for index in range(12):
        plain = generate_sample(SyntheticWorldConfig(**{**TINY, "referring_text_prob": 0.0}), "train", index)
        sentences = generate_sample(SyntheticWorldConfig(**{**TINY, "referring_text_prob": 1.0}), "train", index)
        assert plain.region_texts == plain.phrases
        assert (sentences.caption, sentences.phrases, sentences.refs, sentences.conversation) == (
            plain.caption, plain.phrases, plain.refs, plain.conversation
        )
        own = {i: [t for refs in plain.refs.values() for j, ts in refs if j == i for t in ts]
               for i in range(len(plain.phrases))}
        record = shard_record(sentences)
        assert [r["phrase"] for r in record["regions"]] == sentences.region_texts
        for i, text in enumerate(sentences.region_texts):
            if own[i]:
                assert text in own[i] and resolve(text, sentences.scene) == [i]
            else:
                assert text == plain.phrases[i]
    with pytest.raises(ValueError, match="referring_text_prob"):
        SyntheticWorldConfig(referring_text_prob=1.5)


def test_boxes_are_tight_and_background_is_grey():
    cfg = SyntheticWorldConfig(max_overlap=0.0, colour_jitter=0.0, backgrounds=["plain"], image_size=96)
    for index in range(8):
        rng = image_rng(0, "train", index)
        scene = sample_scene(cfg, rng)
        pixels = np.asarray(render_scene(scene, cfg, rng)).astype(int)
        outside = np.ones(pixels.shape[:2], bool)
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            outside[y1:y2, x1:x2] = False
            ys, xs = np.nonzero((pixels[y1:y2, x1:x2] == obj.rgb).all(-1))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x2 - x1, y2 - y1)
            assert len(xs) == obj.area
        saturation = pixels.max(-1) - pixels.min(-1)
        assert saturation[outside].max() < 40


def test_scene_knobs_are_respected():
    cfg = SyntheticWorldConfig(min_objects=3, max_objects=4, max_overlap=0.02, min_aspect=0.5, max_aspect=2.0)
    for index in range(30):
        scene = sample_scene(cfg, image_rng(5, "val", index))
        assert len(scene.objects) + scene.unplaced in (3, 4)
        assert 0.5 - 0.02 <= scene.width / scene.height <= 2.0 + 0.02
        for i, a in enumerate(scene.objects):
            side = 2 * a.half / min(scene.width, scene.height)
            lo, hi = cfg.min_object_size, cfg.max_object_size
            assert (
                lo <= side <= lo + 0.4 * (hi - lo)
                if a.size == "small"
                else hi - 0.4 * (hi - lo) <= side <= hi
            )
            assert max(a.box[2] - a.box[0], a.box[3] - a.box[1]) <= 2 * a.half + 2
            for b in scene.objects[i + 1 :]:
                iw = max(0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
                ih = max(0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
                union = (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) + (b.box[2] - b.box[0]) * (
                    b.box[3] - b.box[1]
                )
                assert iw * ih / (union - iw * ih) <= 0.02


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"colours": ["red"]}, "colours"),
        ({"shapes": ["blob", "circle"]}, "shapes"),
        ({"clutter": 2.0}, "clutter"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticWorldConfig(**kwargs)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown world format"):
        write_world(tmp_path, SyntheticWorldConfig(**TINY), formats=["shards", "tfrecord"])


def test_manifest_counts_match_files(world):
    out, manifest = world
    assert json.loads((out / "world.json").read_text()) == manifest
    assert manifest["splits"]["train"]["images"] == 10
    assert len(manifest["categories"]) == 6 * 7
    assert [c["id"] for c in manifest["categories"]] == [c.id for c in categories(SyntheticWorldConfig())]
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        shards = sorted((out / "shards" / split).glob("*.tar"))
        assert len(shards) == manifest["formats"]["shards"][f"{split}_shards"] == -(-n // 4)
        members = [m for s in shards for m in tarfile.open(s).getnames()]
        assert len(members) == 2 * n
        assert len(list((out / "coco" / split).glob("*.jpg"))) == n
    formats = manifest["formats"]
    for dataset, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        refs = pickle.loads((out / "refer" / dataset / f"refs({split_by}).p").read_bytes())
        assert len(refs) == formats["refer"][f"{dataset}_refs"]
        assert sum(len(r["sentences"]) for r in refs) == formats["refer"][f"{dataset}_sentences"]
    lines = [p.read_text().splitlines() for p in (out / "flickr30k_entities/Sentences").glob("*.txt")]
    assert sum(map(len, lines)) == formats["flickr30k"]["sentences"]
    assert len(json.loads((out / "llava/test.json").read_text())) == formats["llava"]["test_records"] == 6
    Image.open(out / "preview.png").verify()


def test_shards_hold_the_pretraining_json(world):
    out, _ = world
    with tarfile.open(out / "shards/train/000000.tar") as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile("train_000000.json").read())
        image = Image.open(io.BytesIO(tar.extractfile("train_000000.jpg").read()))
    assert names[:2] == ["train_000000.jpg", "train_000000.json"]
    assert set(record) == {"caption", "width", "height", "regions", "source"}
    assert (record["width"], record["height"]) == image.size
    sample = generate_sample(SyntheticWorldConfig(**TINY), "train", 0)
    assert [r["phrase"] for r in record["regions"]] == sample.region_texts
    for region, obj in zip(record["regions"], sample.scene.objects, strict=True):
        x1, y1, x2, y2 = region["box"]
        assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
        assert region["score"] == 1.0 and obj.category.split()[-1] in region["phrase"]


def test_refer_layout(world):
    out, _ = world
    root = out / "refer"
    cfg = SyntheticWorldConfig(**TINY)
    for dataset, split_by, splits in (
        ("refcoco", "unc", {"train", "val", "testA", "testB"}),
        ("refcoco+", "unc", {"train", "val", "testA", "testB"}),
        ("refcocog", "umd", {"train", "val", "test"}),
    ):
        refs = pickle.loads((root / dataset / f"refs({split_by}).p").read_bytes())  # our own fresh file
        instances = json.loads((root / dataset / "instances.json").read_text())
        anns = {a["id"]: a for a in instances["annotations"]}
        assert {r["split"] for r in refs} == splits
        for ref in refs:
            assert set(ref) == {
                "ref_id",
                "ann_id",
                "image_id",
                "split",
                "sentences",
                "sent_ids",
                "category_id",
                "file_name",
            }
            ann = anns[ref["ann_id"]]
            assert ann["category_id"] == ref["category_id"] and ann["image_id"] == ref["image_id"]
            assert re.fullmatch(
                rf"COCO_train2014_{ref['image_id']:012d}_{ref['ann_id']}\.jpg", ref["file_name"]
            )
            assert (
                root / "images/mscoco/images/train2014" / f"COCO_train2014_{ref['image_id']:012d}.jpg"
            ).is_file()
            assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
            split = {1: "train", 2: "val", 3: "test"}[ref["image_id"] // 1_000_000]
            sample = generate_sample(cfg, split, ref["image_id"] % 1_000_000)
            target = ref["ann_id"] % 100
            for sent in ref["sentences"]:
                assert sent["tokens"] == sent["sent"].split()
                assert resolve(sent["sent"], sample.scene) == [target], sent
                if dataset == "refcoco+":
                    assert not LOCATION_WORDS & set(sent["tokens"])
    gsents = [
        s["sent"] for r in pickle.loads((root / "refcocog/refs(umd).p").read_bytes()) for s in r["sentences"]
    ]
    csents = [
        s["sent"] for r in pickle.loads((root / "refcoco/refs(unc).p").read_bytes()) for s in r["sentences"]
    ]
    assert np.mean([len(s.split()) for s in gsents]) > np.mean([len(s.split()) for s in csents]) + 1


def test_flickr30k_entities_layout(world):
    out, _ = world
    root = out / "flickr30k_entities"
    ids = (root / "test.txt").read_text().split()
    assert len(ids) == 6
    coco = json.loads((out / "coco/annotations/instances_test.json").read_text())
    boxes_by_image = {}
    for ann in coco["annotations"]:
        boxes_by_image.setdefault(str(ann["image_id"]), []).append(ann["bbox"])
    for image_id in ids:
        xml = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        names_with_box, scene_names = set(), set()
        for obj in xml.findall("object"):
            names = {n.text for n in obj.findall("name")}
            if obj.find("bndbox") is not None:
                names_with_box |= names
                b = [int(obj.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
                # 1-based inclusive pixels -> COCO xywh
                assert [b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1] in boxes_by_image[image_id]
            else:
                assert obj.find("scene").text == "1" and obj.find("nobndbox").text == "0"
                scene_names |= names
        assert (root / "flickr30k-images" / f"{image_id}.jpg").is_file()
        lines = (root / "Sentences" / f"{image_id}.txt").read_text().splitlines()
        assert 1 <= len(lines) <= 5
        for line in lines:
            assert line.endswith(" .")
            for eid, kind, text in re.findall(r"\[/EN#(\d+)/(\w+) ([^\]]+)\]", line):
                assert eid in (scene_names if kind == "scene" else names_with_box), line
                assert text.strip()


def test_llava_and_coco_json(world):
    out, manifest = world
    records = json.loads((out / "llava/val.json").read_text())
    assert len(records) == 4
    coco = COCO(str(out / "coco/annotations/instances_val.json"))
    captions = COCO(str(out / "coco/annotations/captions_val.json"))
    assert len(coco.getAnnIds()) == manifest["formats"]["coco"]["val_annotations"]
    for record in records:
        assert (out / "images" / record["image"]).is_file()
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n") and all(
            "<image>" not in t["value"] for t in turns[1:]
        )
        image_id = 2_000_000 + int(record["id"].split("_")[1])
        assert captions.imgToAnns[image_id][0]["caption"] == turns[1]["value"]
        img = coco.imgs[image_id]
        gt = [
            (x / img["width"], y / img["height"], (x + w) / img["width"], (y + h) / img["height"])
            for x, y, w, h in (a["bbox"] for a in coco.imgToAnns[image_id])
        ]
        for question, answer in zip(turns[2::2], turns[3::2], strict=True):
            box_text = parse_boxes(answer["value"]) or parse_boxes(question["value"])
            assert len(box_text) == 1
            assert min(np.abs(np.array(box_text[0]) - np.array(g)).max() for g in gt) <= 1 / 999


def test_world_tokenizer_covers_the_world(world):
    out, _ = world
    tok = load_tokenizer(out / "tokenizer")
    assert tok.eos_token_id == EOS_ID and len(tok) <= 1024
    caption = json.loads((out / "llava/train.json").read_text())[0]["conversations"][1]["value"]
    ids = tok(caption).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == caption
    assert len(ids) < len(caption) / 2  # learned merges, not bytes
