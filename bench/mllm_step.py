"""MLLM finetune step, tokens/s, with and without region prompts (Ferret*: ``<region>`` tokens).

One model built by the library's LLaVA builder with region prompts on: the CLOC tower (frozen), the
projector, the region encoder (Prompter frozen, its MLP trained) and a Llama (trained), as in LLaVA-1.5's
second stage. Both cases run the same sequences: with region prompts, R tokens per sample are
``<region>`` and their boxes go through the Prompter; without, those R tokens are ordinary text.
A step is forward + backward + fused AdamW.

    python -m bench.mllm_step                   # ViT-B/16 tower + a 512-wide 4-layer Llama, ~2 min on 2 cores
    python -m bench.mllm_step --llm-hidden 4096 --llm-layers 32 --llm-intermediate 11008   # 7B shapes (GPU)
    python -m bench.mllm_step --smoke
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.common import (
    bench_config,
    bench_parser,
    build_model,
    device_description,
    make_adamw,
    paired_ratio,
    random_boxes,
    save_results,
    setup,
    time_side_by_side,
    training_step,
)
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, assemble_llava
from cloc_mllm.mllm.training import ModelArguments, set_trainable

NAME = "mllm_step"


def build_mllm(args, device: torch.device):
    """A region-prompt LLaVA over a random CLOC model and a random Llama of the asked shape."""
    cloc = build_model(bench_config(args.preset, args.smoke), device)
    tokenizer = train_world_tokenizer(["what is in the box", "a red circle"], vocab_size=300)
    tokenizer.add_tokens([f"<unused{i}>" for i in range(args.llm_vocab - len(tokenizer))])
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.llm_hidden,
            intermediate_size=args.llm_intermediate,
            num_hidden_layers=args.llm_layers,
            num_attention_heads=args.llm_heads,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    build_args = LlavaBuildArgs(vision_tower="(random)", language_model="(random)", region_prompts=True)
    model, _ = assemble_llava(build_args, cloc.vision_model, llm, tokenizer, cloc)
    set_trainable(model, ModelArguments(model_name_or_path="-", vision_tower="-", region_prompts=True))
    return model.to(device).train()


def make_batches(model, args, device: torch.device) -> dict[str, dict]:
    """Two batches of equal length: ``R`` region tokens + boxes per sample, or plain text in their place.

    Sequence: image tokens, then ``text_len`` text tokens; labels cover the text (image tokens are -100).
    """
    config, g = model.config, torch.Generator().manual_seed(args.seed)
    size, n_image = config.vision_config.image_size, config.image_seq_length
    text = torch.randint(4, config.text_config.vocab_size - 2, (args.batch_size, args.text_len), generator=g)
    text[text == config.image_token_id] = 4
    text[text == config.region_token_id] = 4
    image = torch.full((args.batch_size, n_image), config.image_token_id)
    plain = torch.cat([image, text], dim=1)
    labels = plain.clone()
    labels[:, :n_image] = -100
    with_regions = plain.clone()
    slots = torch.linspace(n_image + 1, plain.shape[1] - 2, args.regions).long()  # spread over the text
    with_regions[:, slots] = config.region_token_id
    common = {
        "pixel_values": torch.randn(args.batch_size, 3, size, size, generator=g),
        "attention_mask": torch.ones_like(plain),
        "labels": labels,
    }
    boxes = random_boxes(args.batch_size * args.regions, g).view(args.batch_size, args.regions, 4)
    batches = {
        "without region prompts": common | {"input_ids": plain},
        f"with {args.regions} region prompts": common | {"input_ids": with_regions, "region_boxes": boxes},
    }
    return {name: {k: v.to(device) for k, v in batch.items()} for name, batch in batches.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__.splitlines()[0], iters=5)
    parser.add_argument("--preset", default="vit-b-16", help="CLOC preset of the vision tower + Prompter")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=128, help="text tokens after the image tokens")
    parser.add_argument("--regions", type=int, default=4, help="<region> tokens per sample")
    parser.add_argument("--llm-hidden", type=int, default=512)
    parser.add_argument("--llm-intermediate", type=int, default=1376)
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--llm-heads", type=int, default=8)
    parser.add_argument("--llm-vocab", type=int, default=32000, help="Vicuna's vocabulary size")
    args = parser.parse_args(argv)
    if args.smoke:
        smoke = dict(batch_size=2, text_len=16, regions=2, llm_hidden=64, llm_intermediate=128, llm_layers=2)
        vars(args).update(smoke, llm_heads=4, llm_vocab=400)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup(args)
    model = build_mllm(args, device)
    optimizer = make_adamw(model, lr=2e-5)
    batches = make_batches(model, args, device)
    steps = {name: training_step(model, optimizer, batch, device) for name, batch in batches.items()}
    timed = time_side_by_side(steps, device, args.warmup, args.iters, desc="MLLM steps")

    tokens = args.batch_size * batches["without region prompts"]["input_ids"].shape[1]
    rows = [
        {"case": name, "step_s": t.median_s, "tokens_per_s": tokens / t.median_s}
        | {"text_tokens_per_s": args.batch_size * args.text_len / t.median_s}
        | {"peak_mb": t.peak_memory_mb, "added_mb": t.peak_added_mb}
        for name, t in timed.items()
    ]
    ratio = paired_ratio(*(timed[name] for name in reversed(batches)))  # with / without
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    summary = [
        f"batch {args.batch_size} x {tokens // args.batch_size} tokens ({model.config.image_seq_length} image + "
        f"{args.text_len} text), Llama {args.llm_hidden}x{args.llm_layers} vocab {args.llm_vocab}, "
        f"{trainable:.1f}M trainable parameters",
    ] + [f"{row['case']}: {row['tokens_per_s']:.0f} tokens/s ({row['step_s']:.3f} s/step)" for row in rows]
    results = {
        "ratio": ratio,
        "tokens_per_step": tokens,
        "timings": {k: t.as_dict() for k, t in timed.items()},
    }
    save_results(NAME, device, args, results, rows, summary)
    print("\n".join(summary))
    print(f"RATIO MLLM step with / without region prompts on {device_description(device)}: {ratio:.3f}x")
    return results


if __name__ == "__main__":
    main()
