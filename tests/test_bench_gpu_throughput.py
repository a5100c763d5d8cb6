"""bench.gpu_throughput without a GPU: runs the tiny version and says that GPU figures are missing."""

import json

import torch

from bench import gpu_throughput


def test_cpu_run_falls_back_to_smoke_and_reports_missing_gpu_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = gpu_throughput.main(["--out-dir", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "GPU figures are missing" in lines[0] and lines[-1].startswith("RATIO CLOC / CLIP-only")
    payload = json.loads((tmp_path / "gpu_throughput-smoke-cpu.json").read_text())
    assert payload["gpu_figures_missing"] is True and results["peak_bf16_tflops"] is None
    assert len(payload["rows"]) == 3 and all(
        r["tflops_per_s"] > 0 and r["mfu"] is None for r in payload["rows"]
    )


def test_peak_table_prefers_the_specific_name(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert gpu_throughput.peak_tflops(cuda, 0.0) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert gpu_throughput.peak_tflops(cuda, 0.0) == 989.0
    assert gpu_throughput.peak_tflops(cuda, 123.0) == 123.0
    assert gpu_throughput.peak_tflops(torch.device("cpu"), 0.0) is None
