"""How much of a LLaVA's box answer comes from the image: loss per box digit, own image vs another's.

Acc@0.5 stays at zero long before a LLaVA stops learning, and the mean answer-token loss mixes the
format tokens and the digits that follow from earlier ones (a circle's x2 from its x1 and y1). This
scores held-out grounding records per answer position (x1's hundreds digit, ..., y2's units) twice:
with each record's own image and with the next record's image in the batch. The difference is what
the LLaVA reads from the image; on x1 / y1's hundreds digits it is the localisation itself.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cloc_mllm.mllm.data import LazySupervisedDataset, SupervisedCollator
from cloc_mllm.mllm.inference import load_mllm

COORDINATES = ("x1", "y1", "x2", "y2")
PLACES = ("hundreds", "tens", "units")


def digit_names(answer_tokens: list[str]) -> list[str | None]:
    """The box position each answer token holds ("x1 hundreds", ...), None for format tokens.

    A coordinate of fewer than three digits ("57") is named from its last digit backwards, so a
    hundreds name always means the coarsest tenth of the image."""
    names: list[str | None] = [None] * len(answer_tokens)
    coordinate, digits = 0, []
    for i, token in enumerate([*answer_tokens, ","]):
        if token.strip().isdigit() and coordinate < len(COORDINATES):
            digits.append(i)
            continue
        for place, index in zip(PLACES[3 - len(digits) :], digits, strict=True):
            names[index] = f"{COORDINATES[coordinate]} {place}"
        if digits:
            coordinate, digits = coordinate + 1, []
    return names


@torch.no_grad()
def digit_losses(model, processor, data: Path, image_folder: Path, limit: int, batch_size: int = 16) -> dict:
    """Mean loss per box position with the record's own image and with another record's, and the
    mean norm of the projected image tokens beside the LLM's token embeddings."""
    dataset = LazySupervisedDataset(
        data, image_folder, processor, num_image_tokens=model.config.image_seq_length
    )
    # records of one image are adjacent in the builders' output: shuffle so a batch's neighbour is another image
    dataset.records = random.Random(0).sample(dataset.records, min(limit, len(dataset.records)))
    collate = SupervisedCollator(processor.tokenizer.pad_token_id)
    tokenizer = processor.tokenizer
    sums: dict[str, dict[str, float]] = {"own": defaultdict(float), "other": defaultdict(float)}
    counts: dict[str, int] = defaultdict(int)
    norms = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        batch = {key: value.to(model.device) for key, value in batch.items()}
        labels = batch.pop("labels")  # (B, L)
        image_tokens = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output  # (B, N, D)
        norms.append(torch.cat(list(image_tokens)).norm(dim=-1).mean().item())
        names = []
        for row in labels:
            answer = row[row != -100].tolist()
            row_names = iter(digit_names([tokenizer.decode([t]) for t in answer]))
            names.append([next(row_names) if t != -100 else None for t in row.tolist()])
        for variant, pixels in (("own", batch["pixel_values"]), ("other", batch["pixel_values"].roll(1, 0))):
            logits = model(**{**batch, "pixel_values": pixels}).logits[:, :-1].float()  # (B, L-1, V)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
            )  # (B, L-1)
            for b, row_names in enumerate(names):
                for t, name in enumerate(row_names[1:]):
                    if name is not None:
                        sums[variant][name] += losses[b, t].item()
                        counts[name] += variant == "own"
    order = sorted(counts, key=lambda n: (COORDINATES.index(n.split()[0]), PLACES.index(n.split()[1])))
    return {
        "digits": {
            name: {variant: sums[variant][name] / counts[name] for variant in sums} | {"tokens": counts[name]}
            for name in order
        },
        # projected image tokens against the LLM's own token embeddings (pre-norm residual inputs)
        "image_token_norm": sum(norms) / len(norms),
        "text_embedding_norm": model.get_input_embeddings().weight.norm(dim=-1).mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llava", required=True, nargs="+")
    parser.add_argument("--data", required=True, help="LLaVA json of held-out grounding records")
    parser.add_argument("--image_folder", required=True)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {
        path: digit_losses(
            *load_mllm(path, device="cpu"), Path(args.data), Path(args.image_folder), args.limit
        )
        for path in args.llava
    }
    Path(args.out).write_text(json.dumps(results, indent=1))
    for path, result in results.items():
        print(
            path,
            f"image token norm {result['image_token_norm']:.1f}, text {result['text_embedding_norm']:.1f}",
        )
        for name, row in result["digits"].items():
            print(
                f"  {name:12s} own {row['own']:.3f}  other image {row['other']:.3f}  gain {row['other'] - row['own']:+.3f}"
            )


if __name__ == "__main__":
    main()
