"""bench.scaling --smoke: one row per (batch, regions) point and a plot."""

import json

from bench import scaling


def test_smoke_run_writes_results_plot_and_prints_ratio_last(tmp_path, capsys):
    scaling.main(["--smoke", "--iters", "1", "--out-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RATIO step time per extra region")
    payload = json.loads((tmp_path / "scaling-smoke-cpu.json").read_text())
    points = [(r["batch"], r["regions_per_image"]) for r in payload["rows"]]
    # regions sweep at batch 2 (M = 0, 1, 4), then batch sweep 1, 2 for CLIP-only and M = 4, no repeats
    assert points == [(2, 0), (2, 1), (2, 4), (1, 0), (1, 4)]
    assert payload["cloc_over_clip"] > 0
    assert (tmp_path / "scaling-smoke-cpu.png").stat().st_size > 0
