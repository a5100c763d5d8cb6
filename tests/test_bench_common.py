"""bench.common: side-by-side timing, peak memory, FLOP counting, batches and result files."""

import json

import pytest
import torch

from bench import common


def test_time_side_by_side_times_every_variant_interleaved():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timed = common.time_side_by_side(fns, torch.device("cpu"), warmup=1, iters=3)
    assert calls[:2] == ["a", "b"]  # warmup
    assert calls[2:] == ["a", "b", "b", "a", "a", "b"]  # the order rotates each round
    for t in timed.values():
        assert len(t.times_s) == 3
        assert t.min_s <= t.median_s <= max(t.times_s)


def test_peak_memory_sees_a_large_allocation():
    device = torch.device("cpu")
    with common.peak_memory(device) as small:
        torch.ones(10)
    with common.peak_memory(device) as large:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert small["mb"] > 0 and "RSS" in large["kind"]
    assert large["mb"] >= small["mb"] + 48


def test_count_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert common.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_random_batch_shapes_and_clip_only_batch(tiny_config):
    batch = common.random_batch(tiny_config, 3, 2, 8, 5, torch.device("cpu"))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["region_input_ids"].shape == (3, 2, 5)
    assert (batch["input_ids"][:, -1] == tiny_config.text_config.eos_token_id).all()
    boxes = batch["region_boxes"]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[..., 2:] > boxes[..., :2]).all()
    assert "region_boxes" not in common.random_batch(tiny_config, 3, 0, 8, 5, torch.device("cpu"))


def test_training_step_changes_weights_with_fused_adamw(tiny_config):
    model = common.build_model(tiny_config, torch.device("cpu"), train=True)
    optimizer = common.make_adamw(model)
    decayed, plain = (group["weight_decay"] for group in optimizer.param_groups)
    assert decayed == 0.2 and plain == 0.0
    before = model.visual_projection.weight.detach().clone()
    batch = common.random_batch(tiny_config, 2, 2, 8, 8, torch.device("cpu"))
    common.training_step(model, optimizer, batch, torch.device("cpu"))()
    assert not torch.equal(before, model.visual_projection.weight)


def test_pick_device_refuses_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.pick_device("auto").type == "cpu"
    with pytest.raises(SystemExit, match="no CUDA"):
        common.pick_device("cuda")


def test_save_results_writes_json_and_markdown(tmp_path):
    args = common.bench_parser("x").parse_args(["--smoke", "--out-dir", str(tmp_path)])
    rows = [{"K": 1, "seconds": 0.123456}, {"K": 2, "seconds": None}]
    path = common.save_results("demo", torch.device("cpu"), args, {"ratio": 2.0}, rows, ["ratio 2.0x"])
    assert path == tmp_path / "demo-smoke-cpu.json"
    payload = json.loads(path.read_text())
    assert payload["ratio"] == 2.0 and payload["rows"] == rows and payload["env"]["device"] == "cpu"
    page = (tmp_path / "demo-smoke-cpu.md").read_text()
    assert "- ratio 2.0x" in page and "| 1 | 0.1235 |" in page and "| 2 | None |" in page
    assert not list(tmp_path.glob("*.tmp"))


def test_parse_ints():
    assert common.parse_ints("16, 1,4,4") == [1, 4, 16]
