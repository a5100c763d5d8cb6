"""What a person watching a run sees: a tqdm bar, TensorBoard scalars and a ``train_log.jsonl``
(one json object per logged step, for plots and reports). Only the main rank writes; other ranks get
a monitor whose methods do nothing. ``plot_runs`` draws runs' logs side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm

from cloc_mllm.atomic_io import atomic_path, write_text_atomic

LOG_FILE = "train_log.jsonl"
DEFAULT_PLOTS = ("train/loss_clip", "train/loss_region", "train/loss_ground", "eval/region_mAcc")


def truncate_log(path: Path, last_step: int) -> None:
    """Drop entries after ``last_step`` (a resumed run re-logs them), rewriting the file atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


class RunMonitor:
    def __init__(self, output_dir: str | Path, start_step: int, max_steps: int, enabled: bool):
        self.enabled = enabled
        self.bar = tqdm(
            total=max_steps, initial=start_step, desc="pretrain", disable=not enabled, dynamic_ncols=True
        )
        self.writer = None
        self.log_path = Path(output_dir) / LOG_FILE
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
            truncate_log(self.log_path, start_step)

    def advance(self, loss: float | None = None) -> None:
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Each ``prefix/name`` value to TensorBoard, the whole dict as one jsonl line."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        finite = {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}
        with self.log_path.open("a") as f:
            f.write(json.dumps({"step": step, **finite}) + "\n")

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def read_log(run_dir: str | Path) -> list[dict]:
    """The ``train_log.jsonl`` entries of a run, in order."""
    path = Path(run_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_runs(
    runs: dict[str, str | Path], out_png: str | Path, metrics: tuple[str, ...] = DEFAULT_PLOTS
) -> Path:
    """One panel per metric, one line per run (e.g. {"CLOC": dir, "CLIP": dir}), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {label: read_log(path) for label, path in runs.items()}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (label, log) in enumerate(logs.items()):
            points = [(e["step"], e[metric]) for e in log if isinstance(e.get(metric), (int, float))]
            if points:  # one colour per run across panels, even where a run has no points
                ax.plot(*zip(*points), color=f"C{i}", marker="." if len(points) < 30 else None, label=label)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_png
