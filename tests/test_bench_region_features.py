"""bench.region_features --smoke: runs, writes json/md/png, counts FLOPs the way the design says."""

import json

import pytest

from bench import region_features


def test_smoke_run_writes_results_and_prints_ratio_last(tmp_path, capsys):
    results = region_features.main(["--smoke", "--iters", "1", "--out-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RATIO crop-and-re-encode")
    payload = json.loads((tmp_path / "region_features-smoke-cpu.json").read_text())
    assert (tmp_path / "region_features-smoke-cpu.png").stat().st_size > 0
    rows = {row["K"]: row for row in payload["rows"]}
    assert sorted(rows) == [1, 4, 16]
    assert rows[16]["full_s"] is None and rows[16]["crop_s"] is None  # only the cross variant at K=16
    # crop-and-re-encode is K image encodes; the cross Prompter's cost grows with K, the full one faster
    assert rows[4]["crop_gflop"] == pytest.approx(4 * rows[1]["crop_gflop"])
    assert rows[4]["crop_gflop"] >= 4 * results["encode_gflop"]
    assert rows[1]["cross_gflop"] < rows[4]["cross_gflop"] < rows[4]["full_gflop"]
    assert results["speedup_vs_crop"] > 0 and 0 < results["prompter_flop_fraction_of_encode"] < 1
