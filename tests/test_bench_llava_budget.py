"""bench.llava_budget --smoke: every stage x head x precision case is built, timed and written (timings themselves are not checked)."""

import json
import sys

import pytest

from bench import llava_budget


@pytest.mark.slow
def test_smoke_run_times_each_stage_and_head(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["llava_budget", "--smoke", "--layers", "1", "--out-dir", str(tmp_path)])
    llava_budget.main()
    payload = json.loads((tmp_path / "llava_budget-smoke-cpu.json").read_text())
    cases = [(r["stage"], r["head"], r["precision"]) for r in payload["rows"]]
    stages, heads, precisions = llava_budget.STAGES, llava_budget.HEADS, llava_budget.PRECISIONS
    assert sorted(cases) == sorted((s, h, p) for s in stages for h in heads for p in precisions)
    rows = {(r["stage"], r["head"]): r for r in payload["rows"]}
    trainable = [rows[(s, "all")]["trainable_m"] for s in ("stage1_projector", "stage2_layers", "stage2_full")]
    assert trainable == sorted(trainable) and len(set(trainable)) == 3  # frozen embeddings sit in between
    assert all(r["median_s"] > 0 and r["answer_tokens"] < r["tokens"] for r in payload["rows"])
