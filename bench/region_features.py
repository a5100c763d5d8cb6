"""Region embeddings for K boxes on one image: Prompter over cached tokens vs crop-and-re-encode.

Three ways to embed K boxes of one image:
- ``cross``: one image encode, then the Prompter's O(K·N) layer (prompt queries read shared image keys);
- ``full``: the paper's literal layer, self-attention over [prompt; image] per region, O(K·(P+N)²);
- ``crop``: cut each box out, resize it to the tower's input and run the whole image tower K times.
Goals (ViT-B/16): crop >= 30x slower than one encode + cross at K = 64, and cross at K = 64 <= 10% of
one image encode.

    python -m bench.region_features            # ViT-B/16 shapes, random weights, ~3 min on 2 CPU cores
    python -m bench.region_features --smoke    # seconds
"""

from __future__ import annotations

import copy

import matplotlib
import torch
import torch.nn.functional as F

from bench.common import (
    bench_config,
    bench_parser,
    build_model,
    count_flops,
    device_description,
    maybe_compile,
    paired_ratio,
    parse_ints,
    random_boxes,
    save_figure,
    save_results,
    setup,
    time_one,
    time_side_by_side,
)
from cloc_mllm.box_ops import roi_align

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = "region_features"
WAYS = ("cross", "full", "crop")


def build_variants(model, image: torch.Tensor, compile_: bool, crop_batch: int):
    """Closures (tokens, boxes) -> (1, K, D) region embeddings for each way, plus the image encoder."""
    full_prompter = copy.deepcopy(model.prompter)
    full_prompter.config.attention = "full"
    cross_fn = maybe_compile(model.prompter.encode_boxes, compile_)
    full_fn = maybe_compile(full_prompter.encode_boxes, compile_)
    encode_fn = maybe_compile(model.get_vision_tokens, compile_)
    image_features = maybe_compile(model.get_image_features, compile_)
    size = model.config.vision_config.image_size

    def crop_and_encode(boxes: torch.Tensor) -> torch.Tensor:
        crops = roi_align(image, boxes, size, sampling_ratio=1)[0]  # (K, 3, size, size)
        return torch.cat([image_features(chunk) for chunk in crops.split(crop_batch)])[None]

    return {
        "encode": lambda: encode_fn(image),
        "cross": lambda tokens, boxes: F.normalize(cross_fn(tokens, boxes), dim=-1),
        "full": lambda tokens, boxes: F.normalize(full_fn(tokens, boxes), dim=-1),
        "crop": lambda tokens, boxes: crop_and_encode(boxes),
    }


def plot(rows: list[dict], encode_s: float, title: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label, style in (
        ("cross_s", "Prompter cross, cached tokens (O(K·N))", "o-"),
        ("full_s", "Prompter full (paper), cached tokens", "s-"),
        ("crop_s", "crop and re-encode each box", "^-"),
    ):
        points = [(r["K"], r[key]) for r in rows if isinstance(r.get(key), float)]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.axhline(encode_s, color="grey", linestyle="--", label="one image encode")
    ax.axhline(0.1 * encode_s, color="grey", linestyle=":", label="10% of one image encode")
    ax.set(xscale="log", yscale="log", xlabel="boxes per image K", ylabel="seconds (median)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def measure(model, image: torch.Tensor, args, device: torch.device) -> tuple[dict, list[dict], float]:
    """Times the goal pair (encode vs cross at the goal K) side by side, then every way at every K.

    Returns the goal timings, one row per K (seconds and GFLOP per call) and the GFLOP of one encode.
    """
    # the goal K is measured every way: the ratios are taken there
    ks, full_ks, crop_ks = (
        sorted({*parse_ints(s), args.goal_k}) for s in (args.ks, args.full_ks, args.crop_ks)
    )
    generator = torch.Generator().manual_seed(args.seed)
    boxes = {k: random_boxes(k, generator)[None].to(device) for k in {*ks, *full_ks, *crop_ks}}
    with torch.inference_mode():
        fns = build_variants(model, image, args.compile, args.crop_batch)
        tokens = fns["encode"]()  # (1, N, C), cached for every K
        goal = time_side_by_side(
            {"encode": fns["encode"], "cross": lambda: fns["cross"](tokens, boxes[args.goal_k])},
            device,
            args.warmup,
            args.iters + 2,
            desc=f"encode vs cross K={args.goal_k}",
        )
        # crop-and-re-encode is K independent encodes: K times the count of one box
        crop_gflop = count_flops(lambda: fns["crop"](tokens, boxes[crop_ks[0]][:, :1])) / 1e9
        rows = []
        for k in sorted(boxes):
            ways = [w for w, on in (("cross", k in ks), ("full", k in full_ks)) if on]
            closures = {w: (lambda w=w, k=k: fns[w](tokens, boxes[k])) for w in ways}
            timed = time_side_by_side(closures, device, args.warmup, args.iters, f"K={k}")
            if k in crop_ks:  # one run is K encodes: long enough alone, and warm after the first K
                warmup = args.warmup if k == crop_ks[0] else 0
                closure = lambda k=k: fns["crop"](tokens, boxes[k])  # noqa: E731
                timed["crop"] = time_one(closure, device, warmup, args.crop_iters, f"crop K={k}")
            row = {"K": k} | {f"{w}_s": timed[w].median_s if w in timed else None for w in WAYS}
            row |= {f"{w}_added_mb": timed[w].peak_added_mb if w in timed else None for w in WAYS}
            row |= {"cross_gflop": None, "full_gflop": None, "crop_gflop": k * crop_gflop}
            row |= {f"{w}_gflop": count_flops(closures[w]) / 1e9 for w in ways}
            rows.append(row)
        encode_gflop = count_flops(fns["encode"]) / 1e9
    return goal, rows, encode_gflop


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-b-16")
    parser.add_argument("--ks", default="1,2,4,8,16,32,64,128,256", help="box counts for the Prompter")
    parser.add_argument("--full-ks", default="1,4,16,64", help="box counts for the paper's full variant")
    parser.add_argument("--crop-ks", default="1,4,16,64", help="box counts for crop-and-re-encode")
    parser.add_argument("--crop-iters", type=int, default=1, help="timed runs of crop-and-re-encode")
    parser.add_argument("--crop-batch", type=int, default=16, help="crops encoded per forward")
    parser.add_argument("--goal-k", type=int, default=64)
    args = parser.parse_args(argv)
    if args.smoke:
        args.ks, args.full_ks, args.crop_ks, args.goal_k = "1,4,16", "1,4", "1,4", 4
    device = setup(args)
    model = build_model(bench_config(args.preset, args.smoke), device)
    size = model.config.vision_config.image_size
    goal, rows, encode_gflop = measure(model, torch.randn(1, 3, size, size, device=device), args, device)

    encode_s, cross_s = goal["encode"].median_s, goal["cross"].median_s
    at_goal = next(r for r in rows if r["K"] == args.goal_k)
    fraction, speedup = paired_ratio(goal["cross"], goal["encode"]), at_goal["crop_s"] / (encode_s + cross_s)
    k = args.goal_k
    flop_fraction = at_goal["cross_gflop"] / encode_gflop
    summary = [
        f"one image encode: {encode_s:.4f} s; Prompter cross at K={k}: {cross_s:.4f} s "
        f"-> {100 * fraction:.1f}% of an encode (median of per-round ratios; goal <= 10%)",
        f"FLOPs: Prompter cross at K={k} {at_goal['cross_gflop']:.2f} GFLOP = {100 * flop_fraction:.1f}% of "
        f"one encode's {encode_gflop:.2f} GFLOP; paper's full variant {at_goal['full_gflop']:.1f} GFLOP; "
        f"crop-and-re-encode {at_goal['crop_gflop']:.0f} GFLOP",
        f"crop-and-re-encode at K={k}: {at_goal['crop_s']:.3f} s = {speedup:.1f}x one encode + Prompter "
        f"(goal >= 30x); {at_goal['crop_s'] / cross_s:.0f}x the Prompter alone on cached tokens",
        f"paper's full Prompter at K={k}: {at_goal['full_s']:.4f} s = {at_goal['full_s'] / cross_s:.1f}x "
        "the cross variant",
    ]
    results = {
        "goal_k": k,
        "encode": goal["encode"].as_dict(),
        "cross_at_goal_k": goal["cross"].as_dict(),
        "prompter_fraction_of_encode": fraction,
        "prompter_flop_fraction_of_encode": flop_fraction,
        "encode_gflop": encode_gflop,
        "speedup_vs_crop": speedup,
        "speedup_vs_crop_cached_tokens": at_goal["crop_s"] / cross_s,
    }
    save_results(NAME, device, args, results, rows, summary)
    title = f"Region embeddings of one image ({device_description(device)})"
    save_figure(plot(rows, encode_s, title), NAME, device, args)
    print("\n".join(summary))
    print(
        f"RATIO crop-and-re-encode / (one encode + Prompter) at K={k}: {speedup:.1f}x (goal >= 30x); "
        f"Prompter / image encode: {100 * fraction:.1f}% (goal <= 10%)"
    )
    return results


if __name__ == "__main__":
    main()
