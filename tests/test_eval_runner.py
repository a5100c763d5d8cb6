import json
import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

from cloc_mllm.eval import encoder
from cloc_mllm.eval.runner import EvalArguments, model_kind, run_evaluation
from tests.eval_helpers import make_world, save_tiny_cloc, save_tiny_llava

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def run_cli(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(REPO / script), run_name="__main__")


def test_model_kind(tmp_path):
    for kind, config in [("cloc", {"model_type": "cloc"}), ("clip", {"model_type": "clip"}),
                         ("mllm", {"model_type": "cloc_llava"})]:  # fmt: skip
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "config.json").write_text(json.dumps(config))
        assert model_kind(tmp_path / kind) == kind
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    assert model_kind(tmp_path / "lora") == "mllm"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        model_kind(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="config.json"):
        model_kind(tmp_path / "empty")
    with pytest.raises(ValueError, match="--suite"):
        EvalArguments(model="m", data_root="d", out="o", suite="everything")
    with pytest.raises(ValueError, match="crop"):
        EvalArguments(model="m", data_root="d", out="o", image_mode="center_crop")


@pytest.mark.slow
def test_cloc_end_to_end_report_and_resume(world, tmp_path, monkeypatch):
    model = save_tiny_cloc(world, tmp_path / "cloc")
    out = tmp_path / "results" / "cloc"
    argv = ["--suite", "all", "--model", str(model), "--data-root", str(world), "--out", str(out)]
    argv += [
        "--benchmarks",
        "refcoco_val,flickr30k_test",
        "--limit",
        "6",
        "--gallery-size",
        "4",
        "--image-mode",
        "pad",
    ]
    run_cli("eval/run.py", argv, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    assert set(results["grounding"]) == {"refcoco_val", "flickr30k_test"}
    assert results["grounding_source"] == "CLOC grounding head"
    assert set(results["grounding"]["flickr30k_test"]) == {"any", "first", "merged", "counts", "localisation", "reference"}
    assert 0 <= results["grounding"]["flickr30k_test"]["reference"]["mean_box_acc@0.5"] <= 1
    enc = results["encoder"]
    assert {"region_recognition", "region_text_retrieval", "image_text_retrieval"} <= set(enc)
    assert results["unavailable"]["zero_shot_classification"].startswith("no image folder")
    probe = enc["patch_probe"]  # fitted on the world's train split, scored on its val split
    assert set(probe["layers"]) == {"-1", "-2"} and probe["test_patches"] == 4 * 16
    assert len(results["model"]["fingerprint"]) == 64 and results["model"]["kind"] == "cloc"
    assert any("refs(unc).p" in k for k in results["data"]["fingerprints"])
    assert any(k.endswith(":test") for k in results["data"]["fingerprints"])  # the Flickr split digest
    assert results["counts"]["refcoco_val"]["items"] == 6 and results["config"]["limit"] == 6
    assert results["timing"]["grounding_head"] > 0 and results["timing"]["total_seconds"] > 0
    md = (out / "results.md").read_text()
    assert "## Grounding (CLOC grounding head)" in md and "### Region recognition" in md
    assert "### Patch tokens, linear probes" in md
    for png in ("grounding.png", "encoder.png", "gallery_refcoco_val.png"):
        assert f"]({png})" in md
        with Image.open(out / png) as im:
            assert im.format == "PNG"
    assert len((out / "predictions" / "refcoco_val.jsonl").read_text().splitlines()) == 6

    # a second run reuses every cached prediction: the grounding head is never called
    def fail(*args, **kwargs):
        raise AssertionError("prediction was not taken from the cache")

    monkeypatch.setattr(encoder, "grounding_head_rows", fail)
    again = run_evaluation(EvalArguments(model=str(model), data_root=str(world), out=str(out), suite="grounding",
                                         benchmarks="refcoco_val,flickr30k_test", limit=6, image_mode="pad"))  # fmt: skip
    assert again["grounding"] == results["grounding"]


@pytest.mark.slow
def test_mllm_end_to_end_and_compare(world, tmp_path, monkeypatch):
    mllm = save_tiny_llava(world, tmp_path / "llava")
    out = tmp_path / "results" / "mllm"
    argv = ["--suite", "grounding", "--model", str(mllm), "--data-root", str(world), "--out", str(out)]
    argv += ["--benchmarks", "refcocog_val,flickr30k_val", "--limit", "3", "--max-new-tokens", "8"]
    run_cli("eval/run.py", argv, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    assert results["grounding_source"] == "MLLM answers" and results["model"]["kind"] == "mllm"
    for bench in ("refcocog_val", "flickr30k_val"):
        counts = results["grounding"][bench]["counts"]
        assert (
            counts["items"] == 3 and counts["scored"] == 3
        )  # a random model's gibberish is scored as misses
        assert 0 <= results["referring"][bench]["noun"] <= 1
    md = (out / "results.md").read_text()
    assert "## Referring" in md and "## What the image gives each box digit" in md
    gain = results["image_digit_gain"]  # 3 + 3 items drawn from both benchmarks, the true boxes as answers
    assert gain["records"] == 6 and gain["digits"] and set(gain["gain"]) == set(gain["digits"])
    assert "image_digit_gain" in results["timing"]

    other = tmp_path / "results" / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({**results, "grounding": {
        "refcocog_val": {"any": {"acc@0.5": 0.5}}}}))  # fmt: skip
    run_cli("eval/compare.py", [str(out), str(other), "--out", str(tmp_path / "cmp")], monkeypatch)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| metric | mllm | other | Δ (2nd − 1st) |" in md
    assert "| grounding/refcocog_val/Acc@0.5 | 0.0 | 50.0 | +50.0 |" in md
    assert "| grounding/flickr30k_val/Acc@0.5 | 0.0 | – | – |" in md
    with Image.open(tmp_path / "cmp" / "compare.png") as im:
        assert im.format == "PNG"
