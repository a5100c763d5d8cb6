"""The preview grid: labelled tiles of the output shards, saved as a PNG."""

import io
import json

import pytest
from PIL import Image

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.vesl.detector import Region
from cloc_mllm.vesl.phrases import build_phrase_extractor
from cloc_mllm.vesl.pipeline import Stages, VeslConfig, run_local
from cloc_mllm.vesl.preview import labelled_tile, render_preview
from cloc_mllm.vesl.writer import ShardWriter, sample_json, shard_paths, write_json_atomic
from cloc_mllm.visualize import BOX_COLOURS
from tests.test_vesl_pipeline import load_script


def jpeg(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_output(out, num_images):
    tar, manifest = shard_paths(out, "000000")
    with ShardWriter(tar) as writer:
        for i in range(num_images):
            regions = [{"box": [10, 10, 50, 40], "phrase": "grey box", "score": 0.87}]
            writer.write(f"k{i}", jpeg((100, 60)), sample_json(f"caption {i}", 100, 60, regions, "test"))
    write_json_atomic(manifest, {})


def test_tile_scales_boxes_with_the_image():
    record = {
        "caption": "a grey box",
        "regions": [{"box": [10, 10, 50, 40], "phrase": "grey box", "score": 0.87}],
    }
    tile = labelled_tile(Image.new("RGB", (100, 60), (90, 90, 90)), record, side=200)
    assert tile.width == 200 and tile.height > 120  # the caption strip sits under the 200 x 120 image
    # the box (10, 10, 50, 40) scaled by 2: its left edge at x = 20 is drawn in the first box colour
    assert tile.getpixel((20, 60)) == BOX_COLOURS[0]
    assert tile.getpixel((60, 60)) == (90, 90, 90)  # inside the box the image is untouched
    with_truth = labelled_tile(
        Image.new("RGB", (100, 60), (90, 90, 90)), record, [{"box": [70, 5, 90, 25]}], 200
    )
    assert with_truth.getpixel((140, 30)) == (255, 255, 255)


def test_render_preview_grid(tmp_path):
    write_output(tmp_path / "out", num_images=5)
    path = render_preview(tmp_path / "out", tmp_path / "p" / "grid.png", num_images=4, columns=2, side=100)
    grid = Image.open(path)
    assert grid.mode == "RGB" and 200 < grid.width < 220 and grid.height > 120  # 2 x 2 tiles of width 100
    with pytest.raises(ValueError, match="no finished VESL shards"):
        render_preview(tmp_path / "empty", tmp_path / "x.png")


def test_preview_script_writes_grid_and_quality_report(tmp_path, monkeypatch, capsys):
    write_world(tmp_path / "world", SyntheticWorldConfig(num_train=3, num_val=0, num_test=0), ["shards"])
    spec = str(tmp_path / "world" / "shards" / "train" / "000000.tar")

    def whole_image(images, phrases):
        return [
            [Region((0.0, 0.0, im.width, im.height), p[0], 0.5)]
            for im, p in zip(images, phrases, strict=True)
        ]

    run_local(
        VeslConfig(input=spec, output=str(tmp_path / "out")),
        stages=Stages(None, build_phrase_extractor(), whole_image),
    )
    result = load_script("vesl_preview", monkeypatch).main(
        ["--output", str(tmp_path / "out"), "--ground-truth", spec, "--num-images", "3"]
    )
    assert Image.open(result["png"]).size[0] > 3 * 300
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert report["images"] == 3 and report["overall"]["predicted"] == 3
    assert (
        report == result["report"]
        and "| phrase | precision |" in (tmp_path / "out" / "quality.md").read_text()
    )
    assert "preview:" in capsys.readouterr().out
