"""What a VESL shard holds, in numbers: counts by outcome and the histograms a person checks first.

One manifest sits beside every output shard; the run's total is the sum of the shard manifests, so it can
be rebuilt at any time (after a resumed or partly parallel run) from the files alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SCORE_BINS = 10  # equal-width bins over [0, 1]

# Why an input image is not written (failures) or is written without regions (no_regions).
FAILURE_REASONS = ("undecodable", "missing_image", "bad_json", "empty_caption", "duplicate_key")
NO_REGION_REASONS = ("no_phrases", "no_detections")


@dataclass
class ShardStats:
    """Counters of one shard (or of a whole run, after :meth:`merge`)."""

    images_in: int = 0
    images_out: int = 0
    regions: int = 0
    failures: Counter = field(default_factory=Counter)
    no_regions: Counter = field(default_factory=Counter)
    phrases_per_image: Counter = field(default_factory=Counter)
    regions_per_image: Counter = field(default_factory=Counter)
    score_hist: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)

    def add_failure(self, reason: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}")
        self.images_in += 1
        self.failures[reason] += 1

    def add_written(self, num_phrases: int, scores: list[float]) -> None:
        """An image written to the shard with ``num_phrases`` queries and regions of these scores."""
        self.images_in += 1
        self.images_out += 1
        self.regions += len(scores)
        self.phrases_per_image[num_phrases] += 1
        self.regions_per_image[len(scores)] += 1
        if num_phrases == 0:
            self.no_regions["no_phrases"] += 1
        elif not scores:
            self.no_regions["no_detections"] += 1
        for s in scores:
            self.score_hist[min(int(s * SCORE_BINS), SCORE_BINS - 1)] += 1

    def merge(self, other: ShardStats) -> None:
        self.images_in += other.images_in
        self.images_out += other.images_out
        self.regions += other.regions
        for mine, theirs in (
            (self.failures, other.failures),
            (self.no_regions, other.no_regions),
            (self.phrases_per_image, other.phrases_per_image),
            (self.regions_per_image, other.regions_per_image),
        ):
            mine.update(theirs)
        self.score_hist = [a + b for a, b in zip(self.score_hist, other.score_hist, strict=True)]

    def to_json(self) -> dict:
        out = max(self.images_out, 1)
        return {
            "images_in": self.images_in,
            "images_out": self.images_out,
            "regions": self.regions,
            "failures": {r: self.failures[r] for r in FAILURE_REASONS},
            "no_regions": {r: self.no_regions[r] for r in NO_REGION_REASONS},
            "phrases_per_image": _histogram(self.phrases_per_image, out),
            "regions_per_image": _histogram(self.regions_per_image, out),
            "score_hist": {
                "edges": [round(i / SCORE_BINS, 2) for i in range(SCORE_BINS + 1)],
                "counts": list(self.score_hist),
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> ShardStats:
        def counts(hist: dict) -> Counter:
            return Counter({int(k): v for k, v in hist["hist"].items()})

        return cls(
            images_in=data["images_in"],
            images_out=data["images_out"],
            regions=data["regions"],
            failures=Counter({k: v for k, v in data["failures"].items() if v}),
            no_regions=Counter({k: v for k, v in data["no_regions"].items() if v}),
            phrases_per_image=counts(data["phrases_per_image"]),
            regions_per_image=counts(data["regions_per_image"]),
            score_hist=list(data["score_hist"]["counts"]),
        )


def _histogram(counts: Counter, images: int) -> dict:
    """{"mean": m, "hist": {"0": n0, "1": n1, ...}} over the written images, keys in numeric order."""
    total = sum(k * v for k, v in counts.items())
    return {"mean": round(total / images, 3), "hist": {str(k): counts[k] for k in sorted(counts)}}
