"""Shared benchmark plumbing: device choice, side-by-side timing, peak memory and result files.

Variants being compared are timed interleaved (A, B, A, B, ... with the order rotated each round), so a
busy shared machine slows them alike and the ratio stays honest; each figure is the median of N runs
after warmup. Peak memory is the process's resident set on CPU (the kernel's high-water mark, reset
before each call) and ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from cloc_mllm import CLOCConfig, CLOCModel
from cloc_mllm.training.benchmark import synthetic_batch
from cloc_mllm.training.optim import adamw_kernel, param_groups

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


# ----- arguments and device ----------------------------------------------------------------------
def bench_parser(description: str, iters: int = 3, warmup: int = 1) -> argparse.ArgumentParser:
    """The flags every benchmark shares; each script adds its own sizes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu) | cpu | cuda")
    parser.add_argument("--iters", type=int, default=iters, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs per variant first")
    parser.add_argument("--compile", action="store_true", help="wrap the timed models in torch.compile")
    parser.add_argument("--smoke", action="store_true", help="CI-sized shapes: checks the run, not timings")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where NAME-<device>.json/.md go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    return parser


def parse_ints(text: str) -> list[int]:
    """``"1,4,16"`` -> [1, 4, 16], sorted and without repeats."""
    return sorted({int(k) for k in text.split(",") if k.strip()})


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the shared flags (threads, seed) and return the device to run on.

    Smoke runs use one thread: tiny ops on a busy shared machine spend most of their time waiting at
    thread barriers otherwise (10x slower and erratic, measured).
    """
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    return pick_device(args.device)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; full fp32 on CPU, where bf16 matmuls are often slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(fn: Callable, enabled: bool) -> Callable:
    return torch.compile(fn) if enabled else fn


def make_adamw(model: torch.nn.Module, lr: float = 5e-4) -> torch.optim.AdamW:
    """The pretraining recipe's AdamW (0.9, 0.98; decay 0.2 on matrices) with the training's kernel choice
    (``training.optim.adamw_kernel``: fused on CPU and CUDA)."""
    groups = param_groups(model, weight_decay=0.2)
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), **adamw_kernel(params))


def device_description(device: torch.device) -> str:
    """Hardware name to print next to every figure (GPU model, or CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- models and inputs ---------------------------------------------------------------------------
def smoke_config(**overrides: Any) -> CLOCConfig:
    """A CLOC config of width 32 and 2 layers (32 px images, 4x4 patches): runs in well under a second.

    ``prompter_config`` overrides are merged into the Prompter's smoke sizes."""
    prompter = {"hidden_size": 32, "intermediate_size": 64} | overrides.pop("prompter_config", {})
    return CLOCConfig.from_preset(
        "tiny",
        projection_dim=32,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        | {"num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        | {"num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 16},
        prompter_config=prompter,
        **overrides,
    )


def bench_config(preset: str, smoke: bool, **overrides: Any) -> CLOCConfig:
    return smoke_config(**overrides) if smoke else CLOCConfig.from_preset(preset, **overrides)


def build_model(config: CLOCConfig, device: torch.device, train: bool = False) -> CLOCModel:
    """Random-weight CLOC model on ``device`` (weights do not change timings)."""
    model = CLOCModel(config).to(device)
    return model.train(train)


def random_boxes(num: int, generator: torch.Generator, min_size: float = 0.05) -> torch.Tensor:
    """(num, 4) valid normalised xyxy boxes of random size and place."""
    wh = torch.rand(num, 2, generator=generator) * (1 - min_size) + min_size
    xy = torch.rand(num, 2, generator=generator) * (1 - wh)
    return torch.cat([xy, xy + wh], dim=-1)


def random_batch(
    config: CLOCConfig,
    batch_size: int,
    num_regions: int,
    text_len: int,
    region_text_len: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The pretraining benchmark's random batch, ready for ``model(**batch).loss``.

    ``num_regions=0`` gives a CLIP-only batch (no region keys), so one CLOC model times both steps.
    """
    # the library's batch always builds region captions (of length >= 1); a CLIP-only batch drops them
    batch = synthetic_batch(config, batch_size, num_regions, text_len, max(region_text_len, 1), device)
    if not num_regions:
        batch = {k: v for k, v in batch.items() if not k.startswith("region_")}
    return batch | {"return_loss": True}


def loss_backward(model: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Forward (bf16 autocast on GPU) and backward of ``model(**batch).loss``; returns the loss."""
    with autocast(device):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach()


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, device) -> Callable:
    """A closure running one forward + backward + optimizer step, for the timers."""

    def step() -> None:
        loss_backward(model, batch, device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ----- timing and memory -------------------------------------------------------------------------
@dataclass
class Timing:
    """Median and fastest seconds per call over the timed runs, every run, and peak memory during them.

    ``peak_memory_mb`` is the whole process's (or device's) peak; ``peak_added_mb`` what the call added
    above what was held when it started (weights and caches excluded).
    """

    median_s: float
    min_s: float
    times_s: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    peak_added_mb: float = 0.0
    memory_kind: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None where there is none."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Yields a dict that holds ``mb``, ``added_mb`` and ``kind`` after the block: its peak memory.

    CPU: the process's peak RSS during the block (Linux resets the high-water mark through
    /proc/self/clear_refs; elsewhere ru_maxrss, the lifetime peak). GPU: max allocated by torch.
    """
    result: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device) / 2**20
        yield result
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        result.update(mb=peak, added_mb=peak - start, kind="cuda max allocated")
        return
    reset = False
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")
        reset = True
    start = _status_mb("VmRSS")
    yield result
    hwm = _status_mb("VmHWM") if reset else None
    if hwm is not None and start is not None:
        result.update(mb=hwm, added_mb=hwm - start, kind="peak RSS")
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        scale = 2**20 if sys.platform == "darwin" else 2**10
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        result.update(mb=peak, added_mb=float("nan"), kind="lifetime peak RSS")


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, iters: int, desc: str = ""
) -> dict[str, Timing]:
    """Median wall time per call of each closure, timed interleaved; see the module docstring."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks = {name: [0.0, 0.0] for name in names}  # [peak, added]
    kind = ""
    rounds = tqdm(range(iters), desc=desc or "timing", leave=False, disable=iters * len(names) < 4)
    for r in rounds:
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            with peak_memory(device) as mem:
                start = time.perf_counter()
                fns[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
            peaks[name] = [max(peaks[name][0], mem["mb"]), max(peaks[name][1], mem["added_mb"])]
            kind = mem["kind"]
    return {
        name: Timing(
            statistics.median(ts), min(ts), ts, round(peaks[name][0], 1), round(peaks[name][1], 1), kind
        )
        for name, ts in times.items()
    }


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of a's time / b's time in the same round (side-by-side timings).

    Runs of one round are seconds apart, so a load change on a shared machine hits both: steadier than
    the ratio of the two medians.
    """
    return statistics.median(x / y for x, y in zip(a.times_s, b.times_s, strict=True))


def time_one(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int, desc: str = "") -> Timing:
    return time_side_by_side({"only": fn}, device, warmup, iters, desc)["only"]


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (matmuls, convolutions, attention; forward and backward), counted by torch.

    A timing-free check of a cost ratio: on a busy shared machine the count is exact where wall time is not.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ----- results -----------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def command_line() -> str:
    """How this run was started, as ``python -m bench.NAME ...`` when it was started as a benchmark."""
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.resolve().parent == Path(__file__).resolve().parent:
        return " ".join(["python", "-m", f"bench.{script.stem}", *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": device.type,
        "hardware": device_description(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys -> a GitHub markdown table (floats to 4 significant digits)."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def results_stem(name: str, device: torch.device, args: argparse.Namespace) -> str:
    return f"{name}-smoke-{device.type}" if args.smoke else f"{name}-{device.type}"


def save_figure(fig, name: str, device: torch.device, args: argparse.Namespace) -> Path:
    """Save a matplotlib figure as ``NAME-<device>.png`` next to the json, atomically, and close it."""
    import matplotlib.pyplot as plt

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results_stem(name, device, args)}.png"
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_results(
    name: str,
    device: torch.device,
    args: argparse.Namespace,
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: list[str],
) -> Path:
    """Write ``NAME-<device>.json`` and ``.md`` (``NAME-smoke-<device>`` for smoke runs) atomically.

    ``rows`` become the markdown table; ``summary`` lines (ratios against goals) head the page.
    Returns the json path.
    """
    stem = results_stem(name, device, args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    payload = {"name": name, "smoke": args.smoke, "env": env, "summary": summary, "rows": rows, **results}
    _atomic_write(out_dir / f"{stem}.json", json.dumps(payload, indent=2, default=str) + "\n")
    page = [
        f"# {name}{' (smoke)' if args.smoke else ''}",
        "",
        f"{env['hardware']}, torch {env['torch']}, {env['date']}; `{env['command']}`",
        "",
    ]
    page += [f"- {line}" for line in summary] + ["", markdown_table(rows), ""]
    _atomic_write(out_dir / f"{stem}.md", "\n".join(page))
    return out_dir / f"{stem}.json"
