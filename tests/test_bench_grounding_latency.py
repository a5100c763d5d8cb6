"""bench.grounding_latency --smoke: every case is timed and per-item figures are consistent."""

import json

import pytest

from bench import grounding_latency


def test_smoke_run_writes_results_and_prints_ratio_last(tmp_path, capsys):
    results = grounding_latency.main(["--smoke", "--iters", "1", "--out-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RATIO grounding latency")
    rows = {
        r["case"]: r for r in json.loads((tmp_path / "grounding_latency-smoke-cpu.json").read_text())["rows"]
    }
    assert set(rows) == {
        "fresh image",
        "cached image tokens",
        "cached tokens + text",
        "batch of queries",
        "regions, cached tokens",
        "regions + image encode",
    }
    assert rows["batch of queries"]["items_per_call"] == 4
    assert rows["regions, cached tokens"]["items_per_call"] == 2 * 8  # smoke: 2 images x 8 boxes
    for row in rows.values():
        assert row["items_per_s"] == pytest.approx(row["items_per_call"] / row["median_s"])
    assert results["boxes_per_s"]["cached"] == rows["regions, cached tokens"]["items_per_s"]
