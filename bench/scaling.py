"""Training-step time against regions per image and against batch size (PNG plots).

A step is forward + backward + fused AdamW. M = 0 regions is the CLIP-only step; each region adds its
caption through the text tower, one Prompter pass for its box and one for its caption (grounding).

    python -m bench.scaling                     # ViT-B/16 shapes, random weights, ~4 min on 2 CPU cores
    python -m bench.scaling --smoke
"""

from __future__ import annotations

import matplotlib
import torch

from bench.common import (
    bench_config,
    bench_parser,
    build_model,
    device_description,
    make_adamw,
    maybe_compile,
    parse_ints,
    random_batch,
    save_figure,
    save_results,
    setup,
    time_side_by_side,
    training_step,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = "scaling"


def sweep(model, args, device: torch.device, points: list[tuple[int, int]]) -> list[dict]:
    """Times one training step at each (batch size, regions per image) point, all points interleaved.

    Same model and optimizer throughout, so one warmup step (at the first point) warms them all.
    """
    optimizer = make_adamw(model)
    forward = maybe_compile(model, args.compile)
    steps = {}
    for batch_size, regions in points:
        batch = random_batch(model.config, batch_size, regions, args.text_len, args.region_text_len, device)
        steps[(batch_size, regions)] = training_step(forward, optimizer, batch, device)
    for _ in range(args.warmup):
        steps[points[0]]()
    timed = time_side_by_side(steps, device, 0, args.iters, desc="training steps")
    return [
        {"batch": b, "regions_per_image": m, "step_s": t.median_s, "images_per_s": b / t.median_s}
        | {"peak_mb": t.peak_memory_mb, "added_mb": t.peak_added_mb}
        for (b, m), t in timed.items()
    ]


def plot(region_rows: list[dict], batch_rows: list[dict], args, title: str):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r["regions_per_image"] for r in region_rows], [r["step_s"] for r in region_rows], "o-")
    left.set(
        xlabel="regions per image M (0 = CLIP-only)",
        ylabel="step time (s, median)",
        title=f"batch {args.batch_size}",
    )
    for regions, label in ((0, "CLIP-only"), (args.batch_regions, f"CLOC, M={args.batch_regions}")):
        rows = [r for r in batch_rows if r["regions_per_image"] == regions]
        right.plot([r["batch"] for r in rows], [r["step_s"] for r in rows], "o-", label=label)
    right.set(xlabel="batch size", ylabel="step time (s, median)", title="step time vs batch")
    right.legend()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0], iters=2)
    parser.add_argument("--preset", default="vit-b-16")
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the regions sweep")
    parser.add_argument("--regions", default="0,1,2,4,8,16", help="regions per image to sweep")
    parser.add_argument("--batch-sizes", default="1,2,4", help="batch sizes to sweep")
    parser.add_argument("--batch-regions", type=int, default=4, help="regions per image in the batch sweep")
    parser.add_argument("--text-len", type=int, default=77, help="caption tokens")
    parser.add_argument("--region-text-len", type=int, default=32, help="region caption tokens")
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.regions, args.batch_sizes, args.text_len, args.region_text_len = "0,1,4", "1,2", 8, 8
    device = setup(args)
    model = build_model(bench_config(args.preset, args.smoke), device, train=True)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    region_points = [(args.batch_size, m) for m in parse_ints(args.regions)]
    batch_points = [(b, m) for m in (0, args.batch_regions) for b in parse_ints(args.batch_sizes)]
    rows = sweep(model, args, device, list(dict.fromkeys(region_points + batch_points)))
    by_point = {(r["batch"], r["regions_per_image"]): r for r in rows}
    region_rows, batch_rows = [by_point[p] for p in region_points], [by_point[p] for p in batch_points]

    base, top = region_rows[0], region_rows[-1]
    per_region = (top["step_s"] / base["step_s"] - 1) / max(
        top["regions_per_image"] - base["regions_per_image"], 1
    )
    m, b = args.batch_regions, args.batch_size
    ratio = by_point[(b, m)]["step_s"] / by_point[(b, 0)]["step_s"] if (b, m) in by_point else None
    summary = [
        f"batch {b}: step {base['step_s']:.3f} s at M={base['regions_per_image']}, {top['step_s']:.3f} s at "
        f"M={top['regions_per_image']}: +{100 * per_region:.1f}% of the CLIP-only step per region per image",
        f"grad checkpointing {args.grad_checkpointing}, compile {args.compile}, caption {args.text_len} "
        f"tokens, region caption {args.region_text_len} tokens",
    ]
    if ratio is not None:
        summary.append(f"CLOC (M={m}) / CLIP-only step at batch {b}: {ratio:.3f}x")
    results = {"per_region_increase": per_region, "cloc_over_clip": ratio}
    save_results(NAME, device, args, results, rows, summary)
    title = f"CLOC training step ({device_description(device)})"
    save_figure(plot(region_rows, batch_rows, args, title), NAME, device, args)
    print("\n".join(summary[1:]))
    last = f"RATIO step time per extra region per image: +{100 * per_region:.1f}% of the CLIP-only step"
    print(last + (f"; CLOC (M={m}) / CLIP-only at batch {b}: {ratio:.3f}x" if ratio is not None else ""))
    return results


if __name__ == "__main__":
    main()
