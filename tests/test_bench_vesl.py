"""The VESL throughput benchmark runs end to end in smoke mode and writes its result files."""

import json

from bench import vesl_throughput


def test_smoke_run_reports_every_stage(tmp_path, capsys):
    result = vesl_throughput.main(["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)])
    rows = {row["stage"]: row for row in result["rows"]}
    assert list(rows) == ["captioner", "phrases", "detector", "whole (label_shard)"]
    assert all(row["images"] == 8 and row["images_per_s"] > 0 for row in rows.values())
    assert rows["whole (label_shard)"]["share_of_whole"] == 1.0
    saved = json.loads((tmp_path / "vesl_throughput-smoke-cpu.json").read_text())
    assert saved["smoke"] and saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert "images/s" in (tmp_path / "vesl_throughput-smoke-cpu.md").read_text()
    assert "whole pipeline" in capsys.readouterr().out
