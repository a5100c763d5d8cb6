"""bench.mllm_step --smoke: both cases run the same tokens; only the region case uses the region encoder."""

import json

import torch

from bench import mllm_step


def test_region_case_differs_only_by_region_tokens_and_trains_the_region_mlp():
    args = mllm_step.parse_args(["--smoke"])
    device = torch.device("cpu")
    model = mllm_step.build_mllm(args, device)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())  # LLaVA stage 2
    assert not any(p.requires_grad for p in model.model.region_encoder.prompter.parameters())
    batches = mllm_step.make_batches(model, args, device)
    plain, regions = batches["without region prompts"], batches["with 2 region prompts"]
    changed = plain["input_ids"] != regions["input_ids"]
    assert changed.sum(dim=1).tolist() == [2, 2]
    assert (regions["input_ids"][changed] == model.config.region_token_id).all()
    region_mlp = model.model.region_encoder.projector.layers[0].weight
    for batch, used in ((plain, False), (regions, True)):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        # reached either way (every rank's backward touches the same parameters); only <region> moves it
        assert region_mlp.grad is not None and bool(region_mlp.grad.any()) == used


def test_smoke_run_writes_results_and_prints_ratio_last(tmp_path, capsys):
    results = mllm_step.main(["--smoke", "--iters", "1", "--out-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RATIO MLLM step with / without")
    payload = json.loads((tmp_path / "mllm_step-smoke-cpu.json").read_text())
    assert [row["case"] for row in payload["rows"]] == ["without region prompts", "with 2 region prompts"]
    assert results["tokens_per_step"] == 2 * (16 + 16)  # smoke tower: 4x4 patches + 16 text tokens
