import json
import logging
import math
from collections import Counter

import pytest
import torch
import webdataset as wds
from transformers import CLIPVisionModel

from cloc_mllm import CLOCModel
from cloc_mllm.data.shards import raw_records
from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.eval.periodic import periodic_evaluator
from cloc_mllm.training import NonFiniteLossError, train
from cloc_mllm.training import checkpoint as ckpt
from cloc_mllm.training.model import build_model

from .pretrain_utils import model_weights, tiny_config, tiny_world

REGION_PARAMS = ("prompter.", "region_logit_scale")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(autouse=True)
def one_thread():
    """Bitwise comparisons and speed on a shared machine: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _initial_weights(config):
    torch.manual_seed(config.seed)
    return build_model(config, load_tokenizer(config.tokenizer)).state_dict()


def test_clip_baseline_trains_no_region_parameter(world, tmp_path):
    config = tiny_config(world, tmp_path / "clip", loss="clip", max_steps=2)
    final = train(config)
    start, end = _initial_weights(config), model_weights(final)
    region = [k for k in end if k.startswith(REGION_PARAMS)]
    assert region and all(torch.equal(start[k], end[k]) for k in region)
    assert not torch.equal(start["text_projection.weight"], end["text_projection.weight"])
    log = [json.loads(line) for line in (tmp_path / "clip" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["train/loss_region"] for entry in log] == [0.0, 0.0]
    assert log[-1]["data/images"] == 16  # 2 steps x 8 images, counted by the collator

    # Resuming the finished run under another recipe is refused, unless explicitly allowed.
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.002.*--allow-config-change"):
        train(tiny_config(world, tmp_path / "clip", loss="clip", max_steps=2, lr=2e-3, resume="auto"))
    again = train(
        tiny_config(
            world,
            tmp_path / "clip",
            loss="clip",
            max_steps=2,
            lr=2e-3,
            resume="auto",
            allow_config_change=True,
        )
    )
    assert again == final  # nothing left to do: the final checkpoint is returned as it is


def test_cloc_trains_the_region_path_and_exports_the_tower(world, tmp_path):
    config = tiny_config(
        world,
        tmp_path,
        max_steps=2,
        eval_coco=str(world / "coco"),
        eval_every=2,
        eval_max_images=4,
        export_vision_tower=True,
    )
    with pytest.raises(ValueError, match="eval_every needs an evaluator"):
        train(config)
    final = train(config, make_evaluator=periodic_evaluator)
    start, end = _initial_weights(config), model_weights(final)
    assert not torch.equal(
        start["prompter.region_projection.weight"], end["prompter.region_projection.weight"]
    )
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if "eval/region_mAcc" in entry]
    assert evals and 0.0 <= evals[-1]["eval/region_mAcc"] <= 1.0 and "eval/t2i_R@1" in evals[-1]
    assert log[0]["train/loss_region"] > 0 and math.isclose(log[0]["train/temperature"], 0.07, rel_tol=0.01)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    tower = CLIPVisionModel.from_pretrained(tmp_path / "vision_tower")
    assert torch.equal(
        tower.state_dict()["embeddings.patch_embedding.weight"],
        end["vision_model.embeddings.patch_embedding.weight"],
    )
    # Each checkpoint is a save_pretrained directory that loads on its own.
    assert isinstance(CLOCModel.from_pretrained(final / "model"), CLOCModel)
    assert (final / "model" / "tokenizer.json").is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    forward, calls = CLOCModel.forward, []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # the parameter probe, steps 1 and 2, then step 3 goes bad
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(CLOCModel, "forward", poisoned)
    config = tiny_config(world, tmp_path, max_steps=4, save_every=2)
    with pytest.raises(
        NonFiniteLossError, match=r"step 3: non-finite.*last good checkpoint is .*step_00000002"
    ):
        train(config)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"]
    good = ckpt.list_checkpoints(tmp_path)[0]
    assert ckpt.load_state(good / ckpt.TRAINER_STATE)["step"] == 2
    assert all(torch.isfinite(v).all() for v in model_weights(good).values())


def test_gradient_checkpointing_and_accumulation_keep_the_maths(world, tmp_path):
    common = {
        "max_steps": 2,
        "save_every": 0,
        "grad_accum_steps": 2,
        "num_streams": 2,
        "global_batch_size": 8,
    }
    plain = model_weights(train(tiny_config(world, tmp_path / "plain", **common)))
    checkpointed = model_weights(
        train(tiny_config(world, tmp_path / "gc", gradient_checkpointing=True, **common))
    )
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_corrupt_samples_are_skipped_and_counted_in_the_log(world, tmp_path, caplog):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, source in enumerate(sorted((world / "shards" / "train").glob("*.tar"))[:2]):
        with wds.TarWriter(str(shards / f"{i:06d}.tar")) as sink:
            for record in raw_records([str(source)], Counter()):
                sink.write({k: v for k, v in record.items() if k != "__url__"})
            if i == 0:
                sink.write({"__key__": "corrupt_jpeg", "jpg": b"\xff\xd8 truncated", "json": b"{}"})
    config = tiny_config(world, tmp_path / "run", train_shards=str(shards), max_steps=2, save_every=0)
    with caplog.at_level(logging.WARNING):
        train(config)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["data/images_undecodable"] >= 1 and log[-1]["data/images"] == 16
    assert "corrupt_jpeg" in caplog.text
