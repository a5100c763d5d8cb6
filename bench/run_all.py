"""Run every benchmark, each in its own process, and collect the ratio each prints last.

Each benchmark writes ``bench/results/NAME-<device>.json`` + ``.md``; this writes ``SUMMARY-<device>.md``
with every benchmark's last line (its ratio) and exit status. A failing or missing benchmark is reported
and counted, and the run goes on; the exit status is non-zero if any failed.

    python -m bench.run_all                     # the full suite, ~30 min on 2 CPU cores (pretrain_step is half)
    python -m bench.run_all --smoke             # about a minute: checks that each one runs
    python -m bench.run_all --only region_features,clip_vs_hf
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, markdown_table, pick_device

BENCHMARKS = (
    "pretrain_step",  # item 1: CLOC vs CLIP-only training step
    "clip_vs_hf",  # item 2
    "region_features",  # item 3
    "grounding_latency",  # item 4
    "mllm_step",  # item 5
    "scaling",  # item 7
    "vesl_throughput",
    "gpu_throughput",  # GPU figures; a smoke run on CPU
)
BENCH_DIR = Path(__file__).resolve().parent


def run_one(name: str, flags: list[str]) -> tuple[int, str, float]:
    """Runs ``python -m bench.NAME`` with ``flags``, echoing its output; -> (exit code, last line, seconds)."""
    start, last = time.perf_counter(), ""
    command = [sys.executable, "-m", f"bench.{name}", *flags]
    with subprocess.Popen(command, cwd=BENCH_DIR.parent, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            last = line.strip() or last
    return proc.returncode, last, time.perf_counter() - start


def accepted_flags(name: str) -> set[str]:
    """The ``--flags`` a benchmark's ``--help`` lists: not every script is built on ``bench_parser``."""
    command = [sys.executable, "-m", f"bench.{name}", "--help"]
    text = subprocess.run(command, cwd=BENCH_DIR.parent, capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))


def passthrough_flags(args: argparse.Namespace, name: str, accepted: set[str]) -> list[str]:
    """This run's flags that the benchmark accepts; results go to --out-dir, or --json where that is all."""
    device = pick_device(args.device).type
    wanted = {"--device": device, "--out-dir": str(args.out_dir)}
    wanted |= {"--threads": str(args.threads)} if args.threads else {}
    if "--out-dir" not in accepted:
        stem = f"{name}-smoke-{device}" if args.smoke else f"{name}-{device}"
        wanted["--json"] = str(args.out_dir / f"{stem}.json")
    flags = [part for flag, value in wanted.items() if flag in accepted for part in (flag, value)]
    switches = {"--smoke": args.smoke, "--compile": args.compile}
    return flags + [flag for flag, on in switches.items() if on and flag in accepted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        if not (BENCH_DIR / f"{name}.py").exists():
            rows.append({"benchmark": name, "status": "missing", "seconds": 0.0, "last line": ""})
            print(f"bench/{name}.py does not exist: skipped and counted as failed")
            continue
        code, last, seconds = run_one(name, passthrough_flags(args, name, accepted_flags(name)))
        rows.append({"benchmark": name, "status": "ok" if code == 0 else f"exit {code}", "seconds": seconds})
        rows[-1]["last line"] = last.replace("|", "/")

    device = pick_device(args.device).type
    stem = f"SUMMARY-smoke-{device}" if args.smoke else f"SUMMARY-{device}"
    path = args.out_dir / f"{stem}.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"# Benchmarks{' (smoke)' if args.smoke else ''}\n\n{markdown_table(rows)}\n")
    tmp.replace(path)
    failed = [r["benchmark"] for r in rows if r["status"] != "ok"]
    print(f"\n{markdown_table(rows)}\n\nsummary: {path}")
    print(
        f"RATIO benchmarks that ran: {len(rows) - len(failed)}/{len(rows)}"
        + (f"; failed: {failed}" * bool(failed))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
