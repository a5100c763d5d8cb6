import json

from cloc_mllm.training.monitor import LOG_FILE, RunMonitor, plot_runs, read_log


def test_log_lines_and_resume_truncation(tmp_path):
    monitor = RunMonitor(tmp_path, start_step=0, max_steps=4, enabled=True)
    for step in (1, 2, 3):
        monitor.scalars(step, {"train/loss": 1.0 / step, "train/grad_norm": float("nan")})
    monitor.close()
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and lines[0]["train/grad_norm"] == "nan"
    # A run resumed from step 2 drops what it will log again.
    RunMonitor(tmp_path, start_step=2, max_steps=4, enabled=True).close()
    assert [json.loads(line)["step"] for line in (tmp_path / LOG_FILE).read_text().splitlines()] == [1, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_other_ranks_write_nothing(tmp_path):
    monitor = RunMonitor(tmp_path, start_step=0, max_steps=2, enabled=False)
    monitor.scalars(1, {"train/loss": 1.0})
    monitor.close()
    assert not (tmp_path / LOG_FILE).exists() and not (tmp_path / "tensorboard").exists()


def test_plot_runs_side_by_side(tmp_path):
    from PIL import Image

    for name, loss in (("cloc", 2.0), ("clip", 3.0)):
        monitor = RunMonitor(tmp_path / name, start_step=0, max_steps=2, enabled=True)
        for step in (1, 2):
            monitor.scalars(step, {"train/loss_clip": loss / step})
        monitor.close()
    assert [e["train/loss_clip"] for e in read_log(tmp_path / "clip")] == [3.0, 1.5]
    png = plot_runs({"CLOC": tmp_path / "cloc", "CLIP": tmp_path / "clip"}, tmp_path / "curves.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height
