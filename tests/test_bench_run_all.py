"""bench.run_all: runs benchmarks in their own processes, collects their last lines, counts failures."""

import pytest
import torch

from bench import run_all


def test_missing_benchmarks_are_counted_as_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "BENCH_DIR", tmp_path / "empty")
    code = run_all.main(["--smoke", "--only", "clip_vs_hf,scaling", "--out-dir", str(tmp_path)])
    assert code == 1
    summary = (tmp_path / "SUMMARY-smoke-cpu.md").read_text()
    assert summary.count("| missing |") == 2
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "RATIO benchmarks that ran: 0/2; failed: ['clip_vs_hf', 'scaling']"
    )


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope", "--out-dir", str(tmp_path)])


@pytest.mark.slow
def test_smoke_run_of_one_benchmark_in_a_subprocess(tmp_path, capsys):
    code = run_all.main(["--smoke", "--only", "clip_vs_hf", "--out-dir", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "clip_vs_hf-smoke-cpu.json").exists()
    row = next(
        line for line in (tmp_path / "SUMMARY-smoke-cpu.md").read_text().splitlines() if "clip_vs_hf" in line
    )
    assert "| ok |" in row and "RATIO ours / transformers" in row


def test_flags_are_passed_only_where_the_benchmark_accepts_them(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "pick_device", lambda name: torch.device("cpu"))
    args = run_all.argparse.Namespace(
        device="auto", out_dir=tmp_path, threads=1, smoke=True, compile=True, only=""
    )
    ours = {"--device", "--out-dir", "--threads", "--smoke", "--compile", "--iters"}
    assert run_all.passthrough_flags(args, "scaling", ours) == [
        "--device", "cpu", "--out-dir", str(tmp_path), "--threads", "1", "--smoke", "--compile",
    ]  # fmt: skip
    own_parser = {"--device", "--smoke", "--json", "--iters"}
    assert run_all.passthrough_flags(args, "pretrain_step", own_parser) == [
        "--device", "cpu", "--json", str(tmp_path / "pretrain_step-smoke-cpu.json"), "--smoke",
    ]  # fmt: skip
