"""The VESL pipeline: exact outputs with injected stages, bad input counted, idempotent and resumable
runs, and end-to-end runs of the real model classes (tiny) on the synthetic world and an image folder."""

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.vesl import tiny
from cloc_mllm.vesl.detector import Region
from cloc_mllm.vesl.phrases import build_phrase_extractor
from cloc_mllm.vesl.pipeline import Stages, VeslConfig, run_local
from cloc_mllm.vesl.writer import iter_shard, read_json

ROOT = Path(__file__).resolve().parents[1]


def encoded(fmt: str, colour="red", size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


class FakeDetector:
    """Finds its first phrase at a fixed box, except phrases with 'ghost'; counts calls."""

    def __init__(self):
        self.images = 0

    def __call__(self, images, phrases):
        self.images += len(images)
        return [[] if "ghost" in p[0] else [Region((1.0, 2.0, 10.0, 8.0), p[0], 0.9)] for p in phrases]


def fake_stages(captioner=None):
    return Stages(captioner, build_phrase_extractor("pattern"), FakeDetector())


def sample(key, image, caption):
    return {"__key__": key, "jpg": image, "json": json.dumps({"caption": caption, "source": "test"}).encode()}


def write_input(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as writer:
        for s in samples:
            writer.write(s)


@pytest.fixture
def tar_input(tmp_path):
    write_input(
        tmp_path / "in" / "000.tar",
        [
            sample("ok", encoded("JPEG"), "a red square on a wooden table"),
            sample("png", encoded("PNG", "blue"), "a blue circle"),
            sample("bad", b"not an image", "a red square"),
            sample("empty", encoded("JPEG"), ""),
            sample("nophrase", encoded("JPEG"), "on top of it"),
            sample("nodet", encoded("JPEG"), "a ghost"),
            sample("ok", encoded("JPEG"), "the same key again"),
        ],
    )
    write_input(tmp_path / "in" / "001.tar", [sample("other", encoded("JPEG"), "a green star")])
    return str(tmp_path / "in" / "{000..001}.tar")


def outputs(out_dir):
    """{key: (jpeg, record)} over every output shard."""
    return {k: (j, r) for tar in sorted(Path(out_dir).glob("*.tar")) for k, j, r in iter_shard(tar)}


def test_exact_outputs_and_counted_failures(tmp_path, tar_input):
    config = VeslConfig(input=tar_input, output=str(tmp_path / "out"), batch_size=3)
    stages = fake_stages()
    summary = run_local(config, stages=stages)
    out = outputs(tmp_path / "out")
    assert sorted(out) == ["nodet", "nophrase", "ok", "other", "png"]
    jpeg, record = out["ok"]
    assert jpeg == encoded("JPEG")  # JPEG input is stored byte for byte
    assert record == {
        "caption": "a red square on a wooden table",
        "width": 40,
        "height": 30,
        "regions": [{"box": [1.0, 2.0, 10.0, 8.0], "phrase": "red square", "score": 0.9}],
        "source": "test",
    }
    png_jpeg, png_record = out["png"]
    assert png_jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(png_jpeg)).size == (40, 30)
    assert png_record["regions"][0]["phrase"] == "blue circle"
    assert out["nophrase"][1]["regions"] == [] and out["nodet"][1]["regions"] == []
    assert stages.detector.images == 4  # images without phrases never reach the detector
    assert (summary["images_in"], summary["images_out"], summary["regions"]) == (8, 5, 3)
    assert summary["failures"] == {
        "undecodable": 1, "missing_image": 0, "bad_json": 0, "empty_caption": 1, "duplicate_key": 1
    }  # fmt: skip
    assert summary["no_regions"] == {"no_phrases": 1, "no_detections": 1}
    assert (summary["shards"], summary["finished"], summary["unfinished"]) == (2, 2, [])
    shard = read_json(tmp_path / "out" / "000000.manifest.json")
    assert shard["shard"] == "000000.tar" and shard["input"].endswith("000.tar") and shard["images_out"] == 4


def test_both_mode_keeps_alt_text_and_adds_the_generated_caption(tmp_path, tar_input):
    config = VeslConfig(input=tar_input, output=str(tmp_path / "out"), caption_mode="both", captioner="fake")
    run_local(config, stages=fake_stages(captioner=lambda images: ["a tall green tree"] * len(images)))
    out = outputs(tmp_path / "out")
    assert out["ok"][1]["caption"] == "a red square on a wooden table. a tall green tree"
    assert out["empty"][1]["caption"] == "a tall green tree"  # no alt-text: only the new caption
    assert [r["phrase"] for r in out["nophrase"][1]["regions"]] == ["tall green tree"]


def test_rerun_skips_finished_shards_and_resumes_unfinished(tmp_path, tar_input):
    config = VeslConfig(input=tar_input, output=str(tmp_path / "out"))
    run_local(config, stages=fake_stages())
    tar0 = tmp_path / "out" / "000000.tar"
    before = tar0.stat().st_mtime_ns, tar0.read_bytes()
    stages = fake_stages()
    assert run_local(config, stages=stages)["images_out"] == 5
    assert stages.detector.images == 0 and (tar0.stat().st_mtime_ns, tar0.read_bytes()) == before
    (tmp_path / "out" / "000001.manifest.json").unlink()  # as if the run died while finishing shard 1
    stages = fake_stages()
    assert run_local(config, stages=stages)["images_out"] == 5
    assert stages.detector.images == 1 and tar0.stat().st_mtime_ns == before[0]


def test_output_dir_of_another_input_is_refused(tmp_path, tar_input):
    run_local(VeslConfig(input=tar_input, output=str(tmp_path / "out")), stages=fake_stages())
    write_input(tmp_path / "other" / "000.tar", [sample("x", encoded("JPEG"), "a cat")])
    with pytest.raises(ValueError, match="shard 000000 was made from"):
        run_local(VeslConfig(input=str(tmp_path / "other" / "000.tar"), output=str(tmp_path / "out")))


def test_a_broken_shard_does_not_stop_the_others(tmp_path, tar_input):
    (tmp_path / "in" / "001.tar").write_bytes(b"garbage" * 100)
    config = VeslConfig(input=tar_input, output=str(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="1 VESL shard"):
        run_local(config, stages=fake_stages())
    total = read_json(tmp_path / "out" / "manifest.json")
    assert (
        total["finished"] == 1
        and total["unfinished"] == ["000001"]
        and "001.tar" in total["errors"]["000001"]
    )
    assert not list((tmp_path / "out").glob("000001*")) and not list((tmp_path / "out").glob("*tmp*"))


def test_config_validation():
    with pytest.raises(ValueError, match="needs --captioner"):
        VeslConfig(input="x", output="y", caption_mode="replace")
    with pytest.raises(ValueError, match="would ignore --captioner"):
        VeslConfig(input="x", output="y", caption_mode="keep", captioner="m")
    assert VeslConfig(input="x", output="y", captioner="m").caption_mode == "replace"
    assert VeslConfig(input="x", output="y").caption_mode == "keep"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return tiny.save_parts(tiny.owl_parts(), root / "owl"), tiny.save_parts(tiny.blip_parts(), root / "blip")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = SyntheticWorldConfig(
        num_train=10, num_val=0, num_test=0, images_per_shard=5, min_aspect=0.6, max_aspect=1.6
    )
    write_world(out, cfg, ["shards"])
    return str(out / "shards" / "train" / "{000000..000001}.tar")


def real_config(world, out, models, **overrides):
    owl, blip = models
    kwargs = dict(input=world, output=str(out), detector=owl, captioner=blip, caption_mode="both")
    return VeslConfig(**(kwargs | dict(threshold=0.5, batch_size=3, max_new_tokens=6) | overrides))


def test_real_tiny_models_on_the_synthetic_world(tmp_path, world, models):
    summary = run_local(real_config(world, tmp_path / "out", models))
    assert (summary["images_in"], summary["images_out"], sum(summary["failures"].values())) == (10, 10, 0)
    assert summary["regions"] > 0 and summary["phrases_per_image"]["mean"] > 1
    records = [r for _, (_, r) in outputs(tmp_path / "out").items()]
    for record in records:
        assert record["caption"].startswith("a") and ". " in record["caption"]  # alt-text. generated
        for region in record["regions"]:
            x1, y1, x2, y2 = region["box"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
            assert region["phrase"] and region["score"] > 0.5


@pytest.mark.slow
def test_parallel_processes_write_the_same_bytes(tmp_path, world, models):
    keep = dict(caption_mode="keep", captioner=None)  # the captioner path is covered above; spawning is slow
    run_local(real_config(world, tmp_path / "one", models, **keep))
    run_local(real_config(world, tmp_path / "two", models, **keep), num_workers=2)
    for name in ("000000.tar", "000001.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def load_script(name, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cli_on_an_image_folder(tmp_path, models, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        (folder / f"im{i}.png").write_bytes(encoded("PNG", colour, (50 + 10 * i, 40)))
        (folder / f"im{i}.txt").write_text(f"a {colour} square next to a small circle")
    argv = ["--input", str(folder), "--output", str(tmp_path / "out"), "--detector", models[0]]
    summary = load_script("vesl", monkeypatch).main(
        argv + ["--batch-size", "2", "--shard-size", "2", "--threshold", "0.5"]
    )
    assert (summary["shards"], summary["images_out"]) == (2, 3)
    assert sorted(outputs(tmp_path / "out")) == ["im0", "im1", "im2"]
    assert json.loads(capsys.readouterr().out)["images_out"] == 3
