"""The main job's claims over several seeds: ``python -m cloc_mllm.pipeline.seeds RUN [RUN ...] --out DIR``.

Each RUN is a finished main-job directory (its ``report.json``) made with the same settings but the
seed. The seed changes the world, both pretrainings and both finetunings, so the spread is that of the
whole experiment, not of the evaluation sample alone. Writes ``DIR/seeds.md`` and ``DIR/seeds.json``:
per claim, each seed's CLIP and CLOC figures, their mean and sample standard deviation, and how many
seeds show the paper's direction.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from cloc_mllm.atomic_io import write_text_atomic

# settings allowed to differ between the runs of one comparison
PER_RUN_FIELDS = {"seed", "out_dir"}


@dataclass
class ClaimOverSeeds:
    name: str
    seeds: list[int]
    clip: list[float | None]
    cloc: list[float | None]
    direction_ok: list[bool | None]

    @staticmethod
    def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
        known = [v for v in values if v is not None]
        if not known:
            return None, None
        return statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None

    def summary(self) -> dict:
        (clip_mean, clip_sd), (cloc_mean, cloc_sd) = self._spread(self.clip), self._spread(self.cloc)
        return {
            **asdict(self), "clip_mean": clip_mean, "clip_sd": clip_sd, "cloc_mean": cloc_mean, "cloc_sd": cloc_sd,
            "direction_seeds": sum(bool(d) for d in self.direction_ok),
        }  # fmt: skip


def read_reports(runs: list[Path]) -> list[dict]:
    """The runs' reports, refused unless their settings agree but for the seed (and directory)."""
    reports = []
    for run in runs:
        path = run / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report; is {run} a finished main-job run?")
        reports.append(json.loads(path.read_text()))
    first = {k: v for k, v in reports[0]["config"].items() if k not in PER_RUN_FIELDS}
    for run, report in zip(runs[1:], reports[1:]):
        other = {k: v for k, v in report["config"].items() if k not in PER_RUN_FIELDS}
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise ValueError(f"{run}: settings differ from {runs[0]} beyond the seed: {differ}")
    seeds = [r["config"]["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs repeat a seed: {seeds}")
    return reports


def claims_over_seeds(reports: list[dict]) -> list[ClaimOverSeeds]:
    """One row per claim name found in every report, in the first report's order."""
    seeds = [r["config"]["seed"] for r in reports]
    by_name = [{c["name"]: c for c in r["claims"]} for r in reports]
    names = [c["name"] for c in reports[0]["claims"] if all(c["name"] in claims for claims in by_name)]
    return [
        ClaimOverSeeds(
            name, seeds, [c[name]["clip"] for c in by_name], [c[name]["cloc"] for c in by_name],
            [c[name]["direction_ok"] for c in by_name],
        )  # fmt: skip
        for name in names
    ]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "—"
    return _pct(mean) + ("" if sd is None else f" ± {100 * sd:.1f}")


def write_seed_report(runs: list[Path], out: Path) -> list[dict]:
    reports = read_reports(runs)
    rows = [claim.summary() for claim in claims_over_seeds(reports)]
    seeds = rows[0]["seeds"] if rows else []
    lines = [
        "# Main-job claims over seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))} (world, pretrainings and finetunings all reseeded); figures in %, "
        "mean ± sample standard deviation over seeds; `direction` = seeds where CLOC moves the paper's way.",
        "",
        "| claim | CLIP | CLOC | direction | " + " | ".join(f"seed {s} CLIP / CLOC" for s in seeds) + " |",
        "|---|---|---|---|" + "---|" * len(seeds),
    ]
    for row in rows:
        per_seed = [f"{_pct(a)} / {_pct(b)}" for a, b in zip(row["clip"], row["cloc"])]
        lines.append(
            f"| {row['name']} | {_mean_sd(row['clip_mean'], row['clip_sd'])} | "
            f"{_mean_sd(row['cloc_mean'], row['cloc_sd'])} | {row['direction_seeds']} of {len(seeds)} | "
            + " | ".join(per_seed) + " |"
        )
    lines += ["", "Runs: " + ", ".join(f"`{r}`" for r in runs), ""]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "seeds.json", json.dumps({"runs": [str(r) for r in runs], "claims": rows}, indent=1))
    write_text_atomic(out / "seeds.md", "\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished main-job run directories, one per seed")
    parser.add_argument("--out", type=Path, required=True, help="where seeds.md and seeds.json go")
    args = parser.parse_args(argv)
    write_seed_report(args.runs, args.out)
    print((args.out / "seeds.md").read_text())


if __name__ == "__main__":
    main()
