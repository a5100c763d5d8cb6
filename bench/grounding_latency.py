"""Grounding latency per text query and region-feature throughput (boxes/s).

Grounding a query = text encode + one Prompter pass over the image tokens + the box MLP. It is timed
on a fresh image (image encode included), on cached image tokens, on cached tokens and text
embeddings, and as a batch of queries over one image (per-query cost). Region features are timed for
a batch of images with K boxes each, with and without the image encode.

    python -m bench.grounding_latency           # ViT-B/16 shapes, random weights, ~1 min on 2 CPU cores
    python -m bench.grounding_latency --smoke
"""

from __future__ import annotations

import torch

from bench.common import (
    bench_config,
    bench_parser,
    build_model,
    device_description,
    maybe_compile,
    random_batch,
    random_boxes,
    save_results,
    setup,
    time_side_by_side,
)

NAME = "grounding_latency"


def grounding_closures(model, image: torch.Tensor, query: dict, queries: dict, compile_: bool) -> dict:
    """Closures timing one query four ways, and a batch of Q queries over one image.

    image (1, 3, H, W); query / queries hold ``input_ids`` and ``attention_mask`` of shape (1 or Q, L).
    """
    ground = maybe_compile(model.ground, compile_)
    tokens = model.get_vision_tokens(image)  # (1, N, C)
    ids, mask = query["input_ids"], query["attention_mask"]
    text = model.get_text_features(ids, mask)  # (1, D)

    def batched() -> torch.Tensor:
        embeds = model.get_text_features(queries["input_ids"], queries["attention_mask"])  # (Q, D)
        return model.prompter.ground(tokens, embeds[None])  # (1, Q, 4)

    return {
        "fresh image": lambda: ground(pixel_values=image, input_ids=ids, attention_mask=mask),
        "cached image tokens": lambda: ground(vision_tokens=tokens, input_ids=ids, attention_mask=mask),
        "cached tokens + text": lambda: ground(vision_tokens=tokens, text_embeds=text),
        "batch of queries": batched,
    }


def region_closures(model, images: torch.Tensor, boxes: torch.Tensor, compile_: bool) -> dict:
    """images (B, 3, H, W), boxes (B, K, 4) -> closures for region features with / without the encode."""
    features = maybe_compile(model.get_region_features, compile_)
    tokens = model.get_vision_tokens(images)  # (B, N, C)
    return {
        "regions, cached tokens": lambda: features(boxes=boxes, vision_tokens=tokens),
        "regions + image encode": lambda: features(pixel_values=images, boxes=boxes),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0], iters=5)
    parser.add_argument("--preset", default="vit-b-16")
    parser.add_argument("--query-len", type=int, default=32, help="tokens per referring expression")
    parser.add_argument("--queries", type=int, default=32, help="queries per image in the batched case")
    parser.add_argument("--images", type=int, default=4, help="images in the region-throughput batch")
    parser.add_argument(
        "--boxes", type=int, default=64, help="boxes per image in the region-throughput batch"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.query_len, args.queries, args.images, args.boxes = 8, 4, 2, 8
    device = setup(args)
    model = build_model(bench_config(args.preset, args.smoke), device)
    size, g = model.config.vision_config.image_size, torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, size, size, generator=g).to(device)
    query = random_batch(model.config, 1, 0, args.query_len, 0, device)  # its caption is the query
    queries = random_batch(model.config, args.queries, 0, args.query_len, 0, device)
    boxes = random_boxes(args.images * args.boxes, g).view(args.images, args.boxes, 4).to(device)
    with torch.inference_mode():
        fns = grounding_closures(model, images[:1], query, queries, args.compile)
        fns |= region_closures(model, images, boxes, args.compile)
        timed = time_side_by_side(fns, device, args.warmup, args.iters, desc="grounding")

    per_call = {"batch of queries": args.queries, "regions, cached tokens": args.images * args.boxes}
    per_call["regions + image encode"] = args.images * args.boxes
    rows = []
    for name, t in timed.items():
        n = per_call.get(name, 1)
        unit = "boxes" if name.startswith("regions") else "queries"
        rows.append(
            {"case": name, "items_per_call": n, "unit": unit, "median_s": t.median_s}
            | {
                "ms_per_item": 1e3 * t.median_s / n,
                "items_per_s": n / t.median_s,
                "peak_mb": t.peak_memory_mb,
                "added_mb": t.peak_added_mb,
            }
        )
    by_case = {row["case"]: row for row in rows}
    fresh, cached = by_case["fresh image"]["ms_per_item"], by_case["cached image tokens"]["ms_per_item"]
    batched = by_case["batch of queries"]["ms_per_item"]
    boxes_per_s = by_case["regions, cached tokens"]["items_per_s"]
    boxes_e2e = by_case["regions + image encode"]["items_per_s"]
    summary = [
        f"grounding one query: {fresh:.1f} ms on a fresh image, {cached:.1f} ms on cached image tokens, "
        f"{batched:.2f} ms per query in a batch of {args.queries}",
        f"region features ({args.images} images x {args.boxes} boxes): {boxes_per_s:.0f} boxes/s on cached "
        f"tokens, {boxes_e2e:.0f} boxes/s with the image encode",
    ]
    results = {"ms_per_query": {"fresh": fresh, "cached": cached, "batched": batched}}
    results["timings"] = {name: t.as_dict() for name, t in timed.items()}
    results |= {"boxes_per_s": {"cached": boxes_per_s, "with_encode": boxes_e2e}}
    save_results(NAME, device, args, results, rows, summary)
    print("\n".join(summary))
    print(
        f"RATIO grounding latency per query, fresh image / cached image tokens on {device_description(device)}: "
        f"{fresh / cached:.1f}x ({fresh:.1f} ms vs {cached:.1f} ms); {boxes_per_s:.0f} boxes/s"
    )
    return results


if __name__ == "__main__":
    main()
