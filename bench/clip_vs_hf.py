"""Our CLIP-only forward + backward vs transformers' ``CLIPModel(return_loss=True)``, same config and weights.

Both models hold the same HF CLIP towers; this checks that CLOC's wrapper (loss module, projections,
the region machinery switched off by ``loss_mode="clip"``) adds no cost. Goal: ours / HF <= 1.0x.

    python -m bench.clip_vs_hf                 # ViT-B/16 shapes, batch 2, random weights, ~3 min on 2 cores
    python -m bench.clip_vs_hf --smoke
"""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

from bench.common import (
    bench_config,
    bench_parser,
    build_model,
    device_description,
    loss_backward,
    maybe_compile,
    paired_ratio,
    random_batch,
    save_results,
    setup,
    time_side_by_side,
)

NAME = "clip_vs_hf"


def hf_twin(ours: torch.nn.Module) -> CLIPModel:
    """transformers' CLIPModel with our towers' config and weights (ours has extra, unused heads)."""
    config = ours.config
    clip_config = CLIPConfig(
        text_config=config.text_config.to_dict(),
        vision_config=config.vision_config.to_dict(),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )
    hf = CLIPModel(clip_config).to(next(ours.parameters()).device)
    missing, _ = hf.load_state_dict(ours.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"CLOC state dict lacks CLIPModel weights {missing[:5]}: the twins would differ")
    return hf.train(ours.training)


def forward_backward(model: torch.nn.Module, batch: dict, device: torch.device, compile_: bool):
    forward = maybe_compile(model, compile_)

    def step() -> torch.Tensor:
        loss = loss_backward(forward, batch, device)
        model.zero_grad(set_to_none=True)
        return loss

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0], iters=7)
    parser.add_argument("--preset", default="vit-b-16")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=77, help="caption tokens (CLIP's context is 77)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="enable it in both models")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.text_len = 4, 8
    device = setup(args)
    ours = build_model(bench_config(args.preset, args.smoke, loss_mode="clip"), device, train=True)
    hf = hf_twin(ours)
    if args.grad_checkpointing:
        ours.gradient_checkpointing_enable()
        hf.gradient_checkpointing_enable()
    batch = random_batch(ours.config, args.batch_size, 0, args.text_len, 0, device)
    steps = {"ours": forward_backward(ours, batch, device, args.compile)}
    steps["transformers"] = forward_backward(hf, batch, device, args.compile)
    loss_ours, loss_hf = steps["ours"](), steps["transformers"]()
    if not torch.allclose(loss_ours.float(), loss_hf.float(), rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"the twins disagree: loss {loss_ours.item()} vs {loss_hf.item()}")
    timed = time_side_by_side(steps, device, args.warmup, args.iters, desc="fwd+bwd")

    ratio = paired_ratio(timed["ours"], timed["transformers"])
    rows = [
        {"model": name, "median_s": t.median_s, "images_per_s": args.batch_size / t.median_s}
        | {"peak_mb": t.peak_memory_mb, "added_mb": t.peak_added_mb}
        | {"runs_s": ", ".join(f"{x:.3f}" for x in t.times_s)}
        for name, t in timed.items()
    ]
    summary = [
        f"batch {args.batch_size}, text {args.text_len} tokens, attention {ours.config._attn_implementation}, "
        f"grad checkpointing {args.grad_checkpointing}, compile {args.compile}; same loss {loss_ours.item():.4f}",
        f"ours / transformers CLIPModel forward+backward: {ratio:.3f}x (median of per-round ratios; "
        f"goal <= 1.0x); ratio of medians {timed['ours'].median_s / timed['transformers'].median_s:.3f}x",
    ]
    results = {"ratio": ratio, "timings": {name: t.as_dict() for name, t in timed.items()}}
    save_results(NAME, device, args, results, rows, summary)
    print("\n".join(summary[:1]))
    hardware = device_description(device)
    print(f"RATIO ours / transformers CLIPModel fwd+bwd on {hardware}: {ratio:.3f}x (goal <= 1.0x)")
    return results


if __name__ == "__main__":
    main()
