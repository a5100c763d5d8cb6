"""Real photographs through every image path: region features, grounding, MLLM chat, VESL previews.

The photos come from installed wheels (cloc_mllm.data.sample_photos) and include the files that break
naive loaders: an EXIF-rotated JPEG, RGBA, 16-bit and palette images, grayscale, odd aspect ratios.
The models are tiny and random, so nothing here is about accuracy: each path must take every photo,
keep boxes on the upright image, and give well-formed output.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cloc_mllm.data.images import upright_rgb
from cloc_mllm.data.sample_photos import hard_variants
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem, score_benchmark
from cloc_mllm.eval.encoder import grounding_head_rows, region_features
from cloc_mllm.eval.inputs import ImageRef, load_images
from tests.eval_helpers import tiny_cloc


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return {p.name: p for p in hard_variants(tmp_path_factory.mktemp("photos"))}


@pytest.fixture(scope="module")
def tokenizer(photos):
    return train_world_tokenizer([p.caption for p in photos.values()], vocab_size=300)


def _upright(photo) -> Image.Image:
    with Image.open(photo.path) as image:
        return upright_rgb(image)


def test_the_wheels_ship_real_photos_with_a_real_box(photos):
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "grace_hopper", "quokka"):
        assert name in photos, (
            f"{name} missing: install scikit-image, matplotlib and imgaug (docs/real_photos.md)"
        )
    quokka = photos["quokka"]
    assert quokka.labels == ("animal",)
    with Image.open(quokka.path) as image:
        x1, y1, x2, y2 = quokka.boxes[0]
        assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
        # the box holds the animal: its pixels differ from the picture's border strip
        inside = np.asarray(image.crop((int(x1), int(y1), int(x2), int(y2)))).mean(axis=(0, 1))
        border = np.asarray(image.crop((0, 0, image.width, 40))).mean(axis=(0, 1))
        assert np.abs(inside - border).max() > 10


def test_every_photo_decodes_upright_and_rgb(photos):
    modes = {Image.open(p.path).mode for p in photos.values()}
    assert {"RGB", "L", "RGBA", "I;16", "P"} <= modes
    for photo in photos.values():
        image = _upright(photo)
        assert image.mode == "RGB" and min(image.size) > 0
    # EXIF: stored turned a quarter, read back as the original photo, so the quokka's box fits again
    stored = Image.open(photos["quokka_exif6"].path)
    original, turned = _upright(photos["quokka"]), _upright(photos["quokka_exif6"])
    assert stored.size == (643, 960) and turned.size == original.size == (960, 643)
    diff = np.abs(np.asarray(turned, dtype=float) - np.asarray(original, dtype=float)).mean()
    assert diff < 3  # JPEG re-encoding noise only
    # alpha composited over white, not the colour stored under transparent pixels
    rgba = _upright(photos["coffee_rgba"])
    assert rgba.getpixel((10, 200)) == (255, 255, 255) and rgba.getpixel((590, 200)) != (255, 255, 255)
    # 16-bit grayscale keeps its contrast (a plain convert would clip nearly every pixel to white)
    assert np.asarray(_upright(photos["coins_16bit"])).std() > 20


def test_an_annotations_size_picks_the_frame_its_boxes_were_drawn_on(photos):
    """Upright by default; the stored pixels when the annotation records their size (a tool that
    ignored the EXIF tag drew the boxes there), and then no later reader turns them."""
    path = str(photos["quokka_exif6"].path)
    refs = [ImageRef(path, 960, 643), ImageRef(path, 643, 960), ImageRef(path)]
    images, sizes = load_images(refs)
    assert [im.size for im in images] == [(960, 643), (643, 960), (960, 643)]
    assert sizes == [[960, 643], [643, 960], [960, 643]]
    assert upright_rgb(images[1]).size == (643, 960)


def _items(photos) -> list[GroundingItem]:
    """One item per photo: its annotated boxes, else the whole picture; sizes read from the file."""
    items = []
    for photo in photos.values():
        width, height = _upright(photo).size
        boxes = photo.boxes or ((0.0, 0.0, float(width), float(height)),)
        items.append(GroundingItem(photo.name, str(photo.path), photo.caption, boxes))
    return items


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_region_features_and_grounding_head_take_every_photo(photos, tokenizer, mode):
    torch.manual_seed(0)
    model = tiny_cloc(tokenizer).eval()
    transform = ImageTransform.from_size(model.config.vision_config.image_size, mode=mode)
    items = _items(photos)

    feats = region_features(model, items, lambda it: list(it.boxes), transform, 4, head=None)
    assert all(f is not None and f.shape == (len(it.boxes), 32) for f, it in zip(feats, items))
    assert all(torch.isfinite(f).all() for f in feats)
    by_name = {it.key: f[0] for it, f in zip(items, feats)}
    # the upright EXIF photo is the quokka photo to the encoder; the turned pixels would not be
    same = torch.cosine_similarity(by_name["quokka_exif6"], by_name["quokka"], dim=0)
    assert same > 0.999  # the turned pixels give about 0.5

    with torch.no_grad():
        rows = grounding_head_rows(model, tokenizer, items, transform)
    for item, row in zip(items, rows):
        assert row["status"] == "ok" and row["image_size"] == list(_upright(photos[item.key]).size)
        (x1, y1, x2, y2) = row["boxes"][0]
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1, (item.key, row)
    bench = GroundingBenchmark("real_photos", items, ("any",))
    result = score_benchmark(bench, {it.key: row for it, row in zip(items, rows)}, ks=())
    assert result["counts"]["scored"] == len(items) and 0 <= result["any"]["acc@0.5"] <= 1


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, tokenizer):
    from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
    from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower

    root = tmp_path_factory.mktemp("llava")
    tower = write_tiny_tower(root / "tower")
    llm = write_tiny_llm(root / "llm", tokenizer, hidden_size=32, num_layers=1, max_positions=256)
    args = LlavaBuildArgs(str(tower), str(llm), image_aspect_ratio="pad", model_max_length=256)
    model, processor = build_llava(args)
    model.save_pretrained(root / "mllm")
    processor.save_pretrained(root / "mllm")
    return root / "mllm"


def test_mllm_answers_every_photo_and_chat_draws_on_the_upright_one(photos, llava_dir, tmp_path, capsys):
    from cloc_mllm.mllm.chat import main as chat
    from cloc_mllm.mllm.inference import generate_answers, load_mllm

    model, processor = load_mllm(llava_dir, device="cpu")
    images = [Image.open(p.path) for p in photos.values()]  # as opened: every mode, EXIF untouched
    prompts = [f"Where is {p.caption}?" for p in photos.values()]
    batched = generate_answers(model, processor, images, prompts, max_new_tokens=6, batch_size=4)
    assert len(batched) == len(images) and all(isinstance(a, str) for a in batched)
    # the EXIF photo is answered as its upright twin
    twins = generate_answers(
        model, processor, [images[list(photos).index(n)] for n in ("quokka", "quokka_exif6")],
        ["Where is the quokka?"] * 2, max_new_tokens=6, batch_size=1,
    )  # fmt: skip
    assert twins[0] == twins[1]

    for name in ("quokka_exif6", "coffee_rgba", "coins_16bit", "rocket_640x41"):
        out = tmp_path / f"{name}.png"
        chat(["--model", str(llava_dir), "--image", str(photos[name].path), "--prompt", "Where is the animal?",
              "--max_new_tokens", "6", "--device", "cpu", "--draw", str(out)])  # fmt: skip
        with Image.open(out) as drawn:
            assert drawn.size == _upright(photos[name]).size
    assert capsys.readouterr().out.count("drawn:") == 4


def test_vesl_labels_and_previews_real_photos(photos, tmp_path):
    from cloc_mllm.vesl import tiny
    from cloc_mllm.vesl.detector import OwlPredictor, RegionDetector
    from cloc_mllm.vesl.phrases import build_phrase_extractor
    from cloc_mllm.vesl.pipeline import Stages, VeslConfig, run_local
    from cloc_mllm.vesl.preview import render_preview
    from cloc_mllm.vesl.writer import iter_output

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos.values():  # the folder source: image files with NAME.txt captions beside them
        suffix = photo.path.suffix
        (folder / f"{photo.name}{suffix}").write_bytes(photo.path.read_bytes())
        (folder / f"{photo.name}.txt").write_text(photo.caption)
    owl = tiny.save_parts(tiny.owl_parts(), tmp_path / "owl")
    detector = RegionDetector(OwlPredictor.from_pretrained(owl), threshold=0.0)
    config = VeslConfig(input=str(folder), output=str(tmp_path / "out"), batch_size=4)
    run_local(config, stages=Stages(None, build_phrase_extractor(), detector))

    written = {key: (jpeg, record) for key, jpeg, record in iter_output(tmp_path / "out")}
    assert set(written) == set(photos)
    for key, (jpeg, record) in written.items():
        with Image.open(io.BytesIO(jpeg)) as stored:
            # stored upright (an EXIF photo is re-encoded), and the json's size is the stored image's
            assert stored.size == (record["width"], record["height"]) == _upright(photos[key]).size
        if min(stored.size) >= max(stored.size) / 10:  # a 640 x 41 strip lies mostly in OWLv2's padding
            assert record["regions"], key
        for region in record["regions"]:
            x1, y1, x2, y2 = region["box"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
    png = render_preview(tmp_path / "out", tmp_path / "preview.png", num_images=len(photos), side=160)
    with Image.open(png) as grid:
        assert grid.mode == "RGB" and grid.width >= 4 * 160


def test_the_docs_gallery_script_draws_every_photo(photos, tmp_path, monkeypatch):
    from tests.test_vesl_pipeline import load_script

    out = load_script("real_photo_gallery", monkeypatch).main(
        ["--out", str(tmp_path / "g.png"), "--side", "64"]
    )
    with Image.open(out) as grid:
        rows = -(-len(photos) // 4)
        assert grid.width >= 4 * 64 and grid.height >= rows * 64
