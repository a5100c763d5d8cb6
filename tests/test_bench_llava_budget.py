"""bench.llava_budget --smoke: every stage x head case is built, timed and written (timings themselves are not checked)."""

import json
import sys

import pytest

from bench import llava_budget


@pytest.mark.slow
def test_smoke_run_times_each_stage_and_head(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["llava_budget", "--smoke", "--layers", "1", "--out-dir", str(tmp_path)])
    llava_budget.main()
    payload = json.loads((tmp_path / "llava_budget-smoke-cpu.json").read_text())
    cases = {(r["stage"], r["head"]) for r in payload["rows"]}
    assert cases == {(s, h) for s in llava_budget.STAGES for h in llava_budget.HEADS}
    rows = {(r["stage"], r["head"]): r for r in payload["rows"]}
    assert rows[("stage1_projector", "all")]["trainable_m"] < rows[("stage2_full", "all")]["trainable_m"]
    assert all(r["median_s"] > 0 and r["answer_tokens"] < r["tokens"] for r in payload["rows"])
