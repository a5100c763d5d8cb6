"""GPU figures: ViT-B/16 224 CLOC training throughput and MFU, CLOC vs CLIP step, ViT-L/14-336 forward.

On a CUDA device: bf16 autocast, fused AdamW, SDPA attention; FLOPs are counted by torch's FlopCounterMode
(forward + backward matmuls and attention), and MFU = counted FLOP/s over the GPU's dense bf16 peak.
Without a GPU the same code runs a tiny smoke version and the results say that GPU figures are missing.

    python -m bench.gpu_throughput              # on a GPU machine
    python -m bench.gpu_throughput --smoke
"""

from __future__ import annotations

import torch

from bench.common import (
    autocast,
    bench_config,
    bench_parser,
    build_model,
    count_flops,
    device_description,
    loss_backward,
    make_adamw,
    maybe_compile,
    paired_ratio,
    pick_device,
    random_batch,
    save_results,
    setup,
    time_one,
    time_side_by_side,
    training_step,
)

NAME = "gpu_throughput"

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; the first substring that matches
# the device name wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
)


def peak_tflops(device: torch.device, override: float) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def train_throughput(args, device: torch.device, peak: float | None) -> tuple[list[dict], dict]:
    """CLOC (M regions) and CLIP-only training steps on the same model, timed side by side."""
    model = build_model(bench_config("vit-b-16", args.smoke), device, train=True)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = make_adamw(model)
    forward = maybe_compile(model, args.compile)
    size, regions = args.batch_size, args.regions
    tower = "tiny (smoke)" if args.smoke else "ViT-B/16 224"
    cloc, clip = f"{tower} CLOC step, M={regions}", f"{tower} CLIP-only step"
    batches = {
        cloc: random_batch(model.config, size, regions, args.text_len, args.region_text_len, device),
        clip: random_batch(model.config, size, 0, args.text_len, 0, device),
    }
    steps = {name: training_step(forward, optimizer, batch, device) for name, batch in batches.items()}
    timed = time_side_by_side(steps, device, args.warmup, args.iters, desc="train steps")
    rows = []
    for name, batch in batches.items():
        flops = count_flops(lambda batch=batch: loss_backward(model, batch, device))
        model.zero_grad(set_to_none=True)
        rows.append(_row(name, size, timed[name], flops, peak))
    return rows, {"cloc_over_clip": paired_ratio(timed[cloc], timed[clip])}


def forward_throughput(args, device: torch.device, peak: float | None) -> dict:
    """The ViT-L/14-336 image tower alone, inference: images/s."""
    model = build_model(bench_config("vit-l-14", args.smoke), device)
    size = model.config.vision_config.image_size
    pixels = torch.randn(args.large_batch_size, 3, size, size, device=device)
    encode = maybe_compile(model.get_vision_tokens, args.compile)

    def forward() -> None:
        with torch.inference_mode(), autocast(device):
            encode(pixels)

    timing = time_one(forward, device, args.warmup, args.iters, desc="ViT-L/14 forward")
    tower = "tiny (smoke)" if args.smoke else "ViT-L/14-336"
    return _row(f"{tower} image forward", args.large_batch_size, timing, count_flops(forward), peak)


def _row(name: str, images: int, timing, flops: float, peak: float | None) -> dict:
    achieved = flops / timing.median_s / 1e12
    return {
        "case": name,
        "batch": images,
        "step_s": timing.median_s,
        "images_per_s": images / timing.median_s,
        "tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_mb": timing.peak_memory_mb,
        "added_mb": timing.peak_added_mb,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0], iters=10, warmup=3)
    parser.add_argument("--batch-size", type=int, default=128, help="ViT-B/16 training batch")
    parser.add_argument("--regions", type=int, default=4, help="regions per image (M)")
    parser.add_argument("--large-batch-size", type=int, default=64, help="ViT-L/14-336 forward batch")
    parser.add_argument("--text-len", type=int, default=77)
    parser.add_argument("--region-text-len", type=int, default=32)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="override the bf16 peak used for MFU")
    args = parser.parse_args(argv)
    missing = pick_device(args.device).type != "cuda"
    if missing and not args.smoke:
        print("no CUDA device: GPU figures are missing; running the tiny smoke version instead")
        args.smoke = True
    device = setup(args)
    if args.smoke:
        args.batch_size, args.large_batch_size, args.iters, args.warmup = 4, 2, 2, 1
        args.text_len, args.region_text_len = 8, 8
    peak = peak_tflops(device, args.peak_tflops)
    rows, results = train_throughput(args, device, peak)
    rows.append(forward_throughput(args, device, peak))
    hardware = device_description(device)
    results |= {"gpu_figures_missing": missing, "peak_bf16_tflops": peak}
    summary = [f"{row['case']} on {hardware}: {row['images_per_s']:.1f} images/s" for row in rows]
    summary = [s + (f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] else "") for s, r in zip(summary, rows)]
    if missing:
        summary.insert(0, "GPU figures missing: no CUDA device here; these are tiny-model smoke numbers")
    save_results(NAME, device, args, results, rows, summary)
    print("\n".join(summary))
    print(f"RATIO CLOC / CLIP-only training step on {hardware}: {results['cloc_over_clip']:.3f}x")
    return results


if __name__ == "__main__":
    main()
