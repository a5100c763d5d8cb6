"""LLaVA step time on the real pretrained LLM (SmolLM2-135M-Instruct from its wheel) by depth and stage.

Chooses the CPU profiles' LLaVA budget by measurement: the pretrained LLM cut to its first N decoder
layers (N = all 30 too) with a tower of the tiny preset's shape (64 image tokens), sequences as long as
the main job's ChatML grounding records, and LLaVA-1.5's two stages: stage 1 (projector only, LLM
frozen: gradients still flow back through every LLM layer to the image tokens), stage 2 with LoRA on
every LLM linear, stage 2 with the whole LLM, stage 2 with the LLM's layers but its token embeddings
(and the LM head tied to them) frozen (``--freeze_embeddings``). Labels cover the answer only, as in the instruction
data; the loss runs the LM head on every position (``head=all``, the model's own loss) or only on the
answer tokens (``head=answers``, what ``LlavaTrainer`` does), in fp32 or under bf16 autocast with fp32
weights (``precision``, what ``--bf16`` does in a plain run). A step is forward + backward + AdamW,
timed interleaved.

    python -m bench.llava_budget                      # ~4 min on 2 cores
    python -m bench.llava_budget --layers 4,30 --smoke
"""

from __future__ import annotations

import copy

import torch

from bench.common import (
    bench_parser,
    device_description,
    make_adamw,
    parse_ints,
    save_results,
    setup,
    time_side_by_side,
)
from cloc_mllm.mllm.builder import LlavaBuildArgs, assemble_llava, prepare_tokenizer
from cloc_mllm.mllm.llm_source import EMBEDDED_LLM, load_language_model, load_tokenizer, truncate_layers
from cloc_mllm.mllm.lora import apply_lora
from cloc_mllm.mllm.templates import render_with_answer_spans, to_messages
from cloc_mllm.mllm.tiny import tiny_tower_model
from cloc_mllm.mllm.training import ModelArguments, answer_token_loss, set_trainable

NAME = "llava_budget"
STAGES = ("stage1_projector", "stage2_lora", "stage2_full", "stage2_layers")
HEADS = ("all", "answers")
PRECISIONS = ("fp32", "bf16")
# A grounding record of the main job's instruction data (the box is what the LLM must write).
RECORD = [
    {"from": "human", "value": "<image>\nWhere is the small red circle left of the blue square?"},
    {"from": "gpt", "value": "[117, 562, 460, 905]"},
]


def sequence_lengths(tokenizer, image_tokens: int) -> tuple[int, int]:
    """Tokens of ``RECORD`` in ChatML with ``<image>`` expanded to the tower's tokens, and of its answer."""
    text, spans = render_with_answer_spans(tokenizer, to_messages(RECORD), tokenizer.chat_template)
    answer = len(tokenizer(text[spans[0][0]:], add_special_tokens=False).input_ids)
    return len(tokenizer(text, add_special_tokens=False).input_ids) - 1 + image_tokens, answer


def build(base_llm, source: str, tokenizer, layers: int, stage: str, device: torch.device):
    tower = tiny_tower_model(image_size=64, patch_size=8, hidden_size=128, num_layers=4)
    llm = copy.deepcopy(base_llm)
    truncate_layers(llm, layers)
    args = LlavaBuildArgs(vision_tower="(random)", language_model=source, conversation_template="chatml")
    model, _ = assemble_llava(args, tower, llm, tokenizer)
    model_args = ModelArguments(
        model_name_or_path=source, vision_tower="-", freeze_backbone=stage in ("stage1_projector", "stage2_lora"),
        tune_mm_mlp_adapter=stage == "stage1_projector", freeze_embeddings=stage == "stage2_layers",
    )
    set_trainable(model, model_args)
    if stage == "stage2_lora":
        model = apply_lora(model, r=16, alpha=32, dropout=0.0)
    return model.to(device).train()


def main() -> None:
    parser = bench_parser(__doc__, iters=3, warmup=1)
    parser.add_argument("--source", default=EMBEDDED_LLM)
    parser.add_argument("--layers", type=parse_ints, default=[4, 8, 30])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="fp32 and/or bf16 (autocast)")
    args = parser.parse_args()
    device = setup(args)
    if args.smoke:
        args.layers, args.batch, args.iters, args.warmup = args.layers[:1], 2, 1, 0
    tokenizer = load_tokenizer(args.source)
    prepare_tokenizer(tokenizer, "chatml", 512, region_prompts=False)
    image_tokens = 64
    length, answer = sequence_lengths(tokenizer, image_tokens)
    base_llm = load_language_model(args.source, dtype=torch.float32)
    rows, fns = [], {}
    generator = torch.Generator().manual_seed(0)
    for layers in args.layers:
        for stage in STAGES:
            model = build(base_llm, args.source, tokenizer, layers, stage, device)
            optimizer = make_adamw(model)
            ids = torch.randint(10, 40000, (args.batch, length), generator=generator)
            ids[:, :image_tokens] = model.config.image_token_id
            labels = ids.clone()
            labels[:, : length - answer] = -100
            batch = {
                "input_ids": ids.to(device),
                "attention_mask": torch.ones_like(ids, device=device),
                "labels": labels.to(device),
                "pixel_values": torch.randn(args.batch, 3, 64, 64, generator=generator).to(device),
            }
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            for head in HEADS:
                for precision in args.precisions.split(","):

                    def step(model=model, optimizer=optimizer, batch=batch, head=head, precision=precision):
                        optimizer.zero_grad(set_to_none=True)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                            loss = model(**batch).loss if head == "all" else answer_token_loss(model, batch)[0]
                        loss.backward()
                        optimizer.step()

                    fns[f"{layers}:{stage}:{head}:{precision}"] = step
                    rows.append({"layers": layers, "stage": stage, "head": head, "precision": precision,
                                 "batch": args.batch, "tokens": length, "answer_tokens": answer,
                                 "trainable_m": round(trainable / 1e6, 2)})
    timings = time_side_by_side(fns, device, args.warmup, args.iters)
    for row in rows:
        t = timings[_key(row)]
        row["median_s"] = round(t.median_s, 3)
        row["tokens_per_s"] = round(row["batch"] * row["tokens"] / t.median_s, 1)
    by = {_key(r): r["median_s"] for r in rows}
    deepest, base = max(args.layers), args.precisions.split(",")[0]
    summary = [f"{device_description(device)}; {length} tokens a sequence ({image_tokens} image tokens, "
               f"{answer} answer tokens), batch {args.batch}"]
    for layers in args.layers:
        for stage in STAGES:
            answers = by[f"{layers}:{stage}:answers:{base}"]
            line = (f"{layers} layers, {stage}: answer-only head {answers / by[f'{layers}:{stage}:all:{base}']:.2f}x "
                    f"the all-position head; {answers / by[f'{deepest}:{stage}:answers:{base}']:.2f}x the {deepest}-layer step")
            if "bf16" in args.precisions and base != "bf16":
                line += f"; bf16 autocast {answers / by[f'{layers}:{stage}:answers:bf16']:.2f}x as fast as {base}"
            summary.append(line)
    print("\n".join(summary))
    for row in rows:
        print(row)
    save_results(NAME, device, args, {}, rows, summary)


def _key(row: dict) -> str:
    return f"{row['layers']}:{row['stage']}:{row['head']}:{row['precision']}"


if __name__ == "__main__":
    main()
