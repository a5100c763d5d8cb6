import json

import torch

from bench import pretrain_step
from cloc_mllm.training.benchmark import synthetic_batch


def test_smoke_run_prints_the_ratio_last_and_writes_results(tmp_path, capsys):
    result = pretrain_step.main(["--smoke", "--out-dir", str(tmp_path), "--iters", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("RATIO CLOC / CLIP-only training step (smoke)")
    ratios = result["ratios"]["smoke"]
    assert f"{ratios['time']:.3f}x" in lines[-1]
    assert ratios["flops"] > 1.0  # the region path is extra work, never free
    modes = {row["mode"]: row for row in result["rows"]}
    assert modes["cloc"]["gflop_per_step"] > modes["clip"]["gflop_per_step"] > 0
    # 2x2-patch grounding cells: a quarter of the cells encoded, still more work than CLIP
    assert modes["cloc"]["gflop_per_step"] > modes["cloc_cells2"]["gflop_per_step"] > modes["clip"]["gflop_per_step"]
    assert ratios["flops"] > ratios["cells"]["cloc_cells2"]["flops"] > 1.0
    assert all(row["median_s"] > 0 and row["peak_mb"] > 0 for row in result["rows"])
    saved = json.loads((tmp_path / "pretrain_step-smoke-cpu.json").read_text())
    assert saved["ratios"]["smoke"]["flops"] == ratios["flops"]


def test_synthetic_batch_is_a_valid_training_batch(tiny_config):
    batch = synthetic_batch(tiny_config, 2, 3, 8, 5, torch.device("cpu"))
    assert batch["region_input_ids"].shape == (2, 3, 5) and batch["region_mask"].all()
    assert (batch["input_ids"][:, -1] == tiny_config.text_config.eos_token_id).all()
    boxes = batch["region_boxes"]
    assert (boxes[..., 2:] > boxes[..., :2]).all() and boxes.min() >= 0 and boxes.max() <= 1
    assert torch.equal(batch["pixel_values"], synthetic_batch(tiny_config, 2, 3, 8, 5, "cpu")["pixel_values"])
