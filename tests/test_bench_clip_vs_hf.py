"""bench.clip_vs_hf --smoke: the HF twin computes the same loss, and the run writes its ratio."""

import json

import torch

from bench import clip_vs_hf, common


def test_hf_twin_matches_our_clip_loss_and_gradients(tiny_config):
    config = tiny_config.__class__(**{**tiny_config.to_dict(), "loss_mode": "clip"})
    ours = common.build_model(config, torch.device("cpu"), train=True)
    hf = clip_vs_hf.hf_twin(ours)
    batch = common.random_batch(config, 3, 0, 8, 0, torch.device("cpu"))
    loss_ours = ours(**batch).loss
    loss_hf = hf(**batch).loss
    torch.testing.assert_close(loss_ours, loss_hf)
    loss_ours.backward()
    loss_hf.backward()
    torch.testing.assert_close(ours.visual_projection.weight.grad, hf.visual_projection.weight.grad)


def test_smoke_run_writes_results_and_prints_ratio_last(tmp_path, capsys):
    results = clip_vs_hf.main(["--smoke", "--iters", "2", "--out-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RATIO ours / transformers")
    payload = json.loads((tmp_path / "clip_vs_hf-smoke-cpu.json").read_text())
    assert payload["ratio"] == results["ratio"] > 0
    assert {row["model"] for row in payload["rows"]} == {"ours", "transformers"}
