"""What the image gives an MLLM's box answer, digit by digit: the answer's loss with each item's own
image against another item's.

Acc@0.5 is zero both when an MLLM ignores the image and when it reads the object's place too coarsely
for IoU 0.5, and the mean answer loss mixes format tokens with digits that follow without the image
(x2 from x1 and the usual size). This scores the true answer of grounding items per box digit (x1's
hundreds digit, ..., y2's units) twice, with the item's own image and with another item's, and
reports ``other - own`` in nats: what the model reads from the image. On the hundreds digits of x1 and
y1 (0-999 box text: a tenth of the image) it is the localisation itself; a model that ignores the
image scores 0 there.
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cloc_mllm.box_text import format_box
from cloc_mllm.eval.benchmarks import GroundingBenchmark
from cloc_mllm.eval.inputs import load_images
from cloc_mllm.mllm.data import LazySupervisedDataset, SupervisedCollator
from cloc_mllm.mllm.instruct_builders import GROUNDING_QUESTIONS, grounding_prompt, write_records
from cloc_mllm.mllm.templates import IMAGE_TOKEN

COORDINATES = ("x1", "y1", "x2", "y2")
PLACES = ("hundreds", "tens", "units")


def digit_names(answer_tokens: list[str]) -> list[str | None]:
    """The box position each answer token holds ("x1 hundreds", ...), None for format tokens.

    Places count from a coordinate's last digit backwards ("57": tens, units), so a hundreds name
    always means the coarsest tenth of the image. A token of several digits (tokenizers that merge
    them) is named by its highest place; a token mixing digits and punctuation counts as format."""
    names: list[str | None] = [None] * len(answer_tokens)
    coordinate, digits = 0, []  # digits: (token index, number of digits) of the coordinate being read
    for i, token in enumerate([*answer_tokens, ","]):
        if token.strip().isdigit() and coordinate < len(COORDINATES):
            digits.append((i, len(token.strip())))
            continue
        left = sum(width for _, width in digits)  # digits of this coordinate still to name, from the left
        for index, width in digits:
            names[index] = f"{COORDINATES[coordinate]} {PLACES[max(0, 3 - left)]}"
            left -= width
        if digits:
            coordinate, digits = coordinate + 1, []
    return names


@torch.no_grad()
def digit_losses(model, processor, data: Path, image_folder: Path | None, limit: int, batch_size: int = 16) -> dict:
    """Mean loss per box position with the record's own image and with another record's (LLaVA json
    records whose answers are boxes), and the mean norm of the projected image tokens beside the LLM's
    token embeddings."""
    dataset = LazySupervisedDataset(data, image_folder, processor, num_image_tokens=model.config.image_seq_length)
    # records of one image are adjacent in the builders' output: shuffle so a batch's neighbour is another image
    dataset.records = random.Random(0).sample(dataset.records, min(limit, len(dataset.records)))
    collate = SupervisedCollator(processor.tokenizer.pad_token_id)
    tokenizer = processor.tokenizer
    sums: dict[str, dict[str, float]] = {"own": defaultdict(float), "other": defaultdict(float)}
    counts: dict[str, int] = defaultdict(int)
    norms = []
    device = next(model.parameters()).device
    scored = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        if batch["pixel_values"].shape[0] < 2:  # a last batch of one has no other image to swap in
            continue
        scored += batch["pixel_values"].shape[0]
        batch = {key: value.to(device) for key, value in batch.items()}
        labels, pixels = batch.pop("labels"), batch.pop("pixel_values")  # (B, L), (B, 3, H, W)
        # one tower + projector pass serves both variants and the norm
        image_tokens = torch.stack(list(model.get_image_features(pixel_values=pixels).pooler_output))  # (B, N, D)
        norms.append(image_tokens.norm(dim=-1).mean().item())
        # logits only from the position before the batch's first answer token on (the LM head over
        # the image and question positions would cost as much as the LLM itself)
        start = int((labels != -100).int().argmax(-1).min())
        labels = labels[:, start:]  # (B, L')
        names = []
        for row in labels:
            answer = row[row != -100].tolist()
            row_names = iter(digit_names([tokenizer.decode([t]) for t in answer]))
            names.append([next(row_names) if t != -100 else None for t in row.tolist()])
        for variant, tokens in (("own", image_tokens), ("other", image_tokens.roll(1, 0))):
            features = BaseModelOutputWithPooling(pooler_output=tuple(tokens))  # Llava reads one (N, D) per image
            logits = model(
                **batch, mm_encoder_outputs={"image": features}, logits_to_keep=labels.shape[1] + 1
            ).logits[:, :-1].float()  # (B, L', V): logits[:, t] predicts labels[:, t]
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
            ).tolist()  # (B, L')
            for b, row_names in enumerate(names):
                for t, name in enumerate(row_names):
                    if name is not None:
                        sums[variant][name] += losses[b][t]
                        counts[name] += variant == "own"
    order = sorted(counts, key=lambda n: (COORDINATES.index(n.split()[0]), PLACES.index(n.split()[1])))
    digits = {
        name: {variant: sums[variant][name] / counts[name] for variant in sums} | {"tokens": counts[name]}
        for name in order
    }
    return {
        "records": scored,
        "digits": digits,
        "gain": {name: row["other"] - row["own"] for name, row in digits.items()},
        # projected image tokens against the LLM's own token embeddings (pre-norm residual inputs)
        "image_token_norm": sum(norms) / len(norms),
        "text_embedding_norm": model.get_input_embeddings().weight.norm(dim=-1).mean().item(),
    }


def grounding_answer_records(benchmarks: Sequence[GroundingBenchmark], prompt: str, limit: int) -> list[dict]:
    """LLaVA records for ``limit`` items drawn from all ``benchmarks``: each asks the item's grounding
    question (as the evaluation asks it) and answers with its first annotated box. Items whose image
    cannot be read are left out (the grounding evaluation counts them)."""
    pool = [(benchmark.name, item) for benchmark in benchmarks for item in benchmark.items if item.boxes]
    drawn = random.Random(0).sample(pool, min(limit, len(pool)))
    images, sizes = load_images([item for _, item in drawn])
    records = []
    for (name, item), image, (width, height) in zip(drawn, images, sizes, strict=True):
        if image is None:
            continue
        x1, y1, x2, y2 = item.boxes[0]
        records.append({
            "id": f"{name}-{item.key}",
            "image": str(Path(item.image_path).resolve()),
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{grounding_prompt(item.text, prompt)}"},
                {"from": "gpt", "value": format_box((x1 / width, y1 / height, x2 / width, y2 / height))},
            ],
        })  # fmt: skip
    return records


def image_digit_gain(
    model, processor, benchmarks: Sequence[GroundingBenchmark], limit: int = 256,
    prompt: str = GROUNDING_QUESTIONS[0], batch_size: int = 16,
) -> dict:  # fmt: skip
    """``digit_losses`` on ``limit`` items drawn from all ``benchmarks`` (their true boxes as answers)."""
    records = grounding_answer_records(benchmarks, prompt, limit)
    if len(records) < 2:
        raise ValueError(f"image digit gain: {len(records)} grounding items with a readable image, need 2")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "grounding_answers.json"
        write_records(records, path)
        return digit_losses(model, processor, path, None, limit, batch_size)
