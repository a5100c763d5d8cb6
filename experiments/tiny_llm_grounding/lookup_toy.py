"""A toy of the lookup behind MLLM grounding, to see what a tiny from-scratch LLM learns in a CPU budget.

Oracle visual tokens (per grid cell: one-hots of the class of the object on it, of its row and of its
column) go through a LLaVA-style MLP projector into a Llama, followed by the question
``where <colour> <shape>`` and ``gap`` constant tokens; the LLM answers the hundreds digits of the
object's x1, y1, x2, y2 in 0-999 units, teacher-forced. With ``gap=0`` the token that predicts x1 names
the object itself: one hop, a class-keyed lookup among the visual tokens. With ``gap>0`` — a chat
template between question and answer — the LLM must first move the words to the answering position and
then look up: two hops. ``curriculum_steps`` trains with ``gap=0`` first, so the second hop is learned
on top of a lookup that already works (docs/mllm.md, "Two hops").

    python -m experiments.tiny_llm_grounding.lookup_toy --gap 2 --curriculum_steps 1000 --steps 2500
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from cloc_mllm.atomic_io import write_bytes_atomic
from cloc_mllm.training.optim import warmup_cosine

DIGITS = 10  # answer tokens 1..10 are the digits 0..9; token 0 is unused


@dataclass
class LookupToyConfig:
    grid: int = field(default=8, metadata={"help": "Visual tokens per side."})
    num_colours: int = 7
    num_shapes: int = 6
    min_objects: int = 2
    max_objects: int = field(default=5, metadata={"help": "Objects per scene, classes all different."})
    gap: int = field(default=2, metadata={"help": "Constant tokens between the question and the answer."})
    curriculum_steps: int = field(default=0, metadata={"help": "First steps trained with gap=0."})
    steps: int = 2500
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    initializer_range: float = 0.1
    eval_size: int = 512
    eval_every: int = 500
    seed: int = 0
    out: str = field(default="", metadata={"help": "Write the accuracy curve here (json)."})

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects <= self.num_classes:
            raise ValueError(
                f"LookupToyConfig: need 1 <= min_objects <= max_objects <= {self.num_classes} classes, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if self.grid < 3 or self.gap < 0 or self.steps < 1 or self.eval_every < 1:
            raise ValueError(
                f"LookupToyConfig: need grid >= 3 (objects are up to 3 cells), gap >= 0, steps >= 1 and "
                f"eval_every >= 1, got {self.grid}, {self.gap}, {self.steps}, {self.eval_every}"
            )

    @property
    def num_classes(self) -> int:
        return self.num_colours * self.num_shapes

    @property
    def feature_size(self) -> int:
        return self.num_classes + 1 + 2 * self.grid  # classes + background, row, column

    @property
    def vocab_size(self) -> int:
        return 1 + DIGITS + 1 + self.num_colours + self.num_shapes + self.gap


class Vocabulary:
    """Token ids of the toy language: digits, ``where``, colours, shapes, then the gap tokens."""

    def __init__(self, config: LookupToyConfig):
        self.where = 1 + DIGITS
        self.colour0 = self.where + 1
        self.shape0 = self.colour0 + config.num_colours
        self.gap0 = self.shape0 + config.num_shapes
        self.num_shapes = config.num_shapes

    def question(self, class_id: int, gap: int) -> list[int]:
        colour, shape = divmod(class_id, self.num_shapes)
        return [self.where, self.colour0 + colour, self.shape0 + shape] + [self.gap0 + i for i in range(gap)]


def box_digits(box: tuple[int, int, int, int], grid: int) -> list[int]:
    """Hundreds digits (as tokens 1..10) of a cell box (x1, y1, x2, y2), x2/y2 exclusive, in 0-999 units."""
    edges = [box[0], box[1], box[2] - 1e-3, box[3] - 1e-3]
    return [1 + min(9, int(v / grid * 1000) // 100) for v in edges]


def sample_scene(
    config: LookupToyConfig, rng: random.Random
) -> tuple[torch.Tensor, int, tuple[int, int, int, int]]:
    """Non-overlapping squares of 1-3 cells, classes all different (one with no free place after 50
    tries is left out; rare on an 8 x 8 grid); returns features, the asked class and its box."""
    g = config.grid
    cells = torch.full((g, g), config.num_classes, dtype=torch.long)  # background id
    objects = []
    for class_id in rng.sample(
        range(config.num_classes), rng.randint(config.min_objects, config.max_objects)
    ):
        for _ in range(50):
            side = rng.randint(1, 3)
            row, col = rng.randint(0, g - side), rng.randint(0, g - side)
            if (cells[row : row + side, col : col + side] == config.num_classes).all():
                cells[row : row + side, col : col + side] = class_id
                objects.append((class_id, (col, row, col + side, row + side)))
                break
    index = torch.arange(g * g)
    features = torch.zeros(g * g, config.feature_size)  # (cells, classes + 1 + 2 * grid)
    features[index, cells.flatten()] = 3.0
    features[index, config.num_classes + 1 + index // g] = 3.0
    features[index, config.num_classes + 1 + g + index % g] = 3.0
    class_id, box = rng.choice(objects)
    return features, class_id, box


def make_batch(config: LookupToyConfig, rng: random.Random, size: int, gap: int):
    """(features (B, cells, F), question ids (B, 3 + gap), answer digit tokens (B, 4))."""
    vocab = Vocabulary(config)
    scenes = [sample_scene(config, rng) for _ in range(size)]
    features = torch.stack([s[0] for s in scenes])
    questions = torch.tensor([vocab.question(s[1], gap) for s in scenes])
    answers = torch.tensor([box_digits(s[2], config.grid) for s in scenes])
    return features, questions, answers


class LookupToy(nn.Module):
    """Projector + Llama, the two parts a LLaVA trains, on oracle visual tokens."""

    def __init__(self, config: LookupToyConfig):
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(config.feature_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.llm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=config.vocab_size,
                hidden_size=config.hidden_size,
                intermediate_size=2 * config.hidden_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                num_key_value_heads=max(1, config.num_heads // 2),
                initializer_range=config.initializer_range,
                max_position_embeddings=config.grid**2 + 16,
                tie_word_embeddings=False,
            )
        )

    def forward(self, features: torch.Tensor, questions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Logits (B, 4, V) for the four answer digits, each predicted from the tokens before it."""
        embed = self.llm.get_input_embeddings()
        sequence = torch.cat([self.projector(features), embed(questions), embed(answers[:, :-1])], dim=1)
        return self.llm(inputs_embeds=sequence).logits[:, -4:]


def digit_accuracy(model: LookupToy, batch) -> list[float]:
    """Teacher-forced accuracy of the x1, y1, x2, y2 hundreds digits."""
    with torch.no_grad():
        return (model(*batch).argmax(-1) == batch[2]).float().mean(0).tolist()


def train_lookup_toy(config: LookupToyConfig) -> list[dict]:
    """Trains from scratch; returns the accuracy curve on held-out scenes with the final ``gap``."""
    torch.manual_seed(config.seed)
    model = LookupToy(config)
    test = make_batch(config, random.Random(config.seed + 1), config.eval_size, config.gap)
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, config.steps)
    curve = []
    for step in tqdm(range(1, config.steps + 1), desc="lookup toy"):
        gap = 0 if step <= config.curriculum_steps else config.gap
        features, questions, answers = make_batch(config, rng, config.batch_size, gap)
        loss = nn.functional.cross_entropy(
            model(features, questions, answers).flatten(0, 1), answers.flatten()
        )
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % config.eval_every == 0 or step == config.steps:
            accuracy = digit_accuracy(model, test)
            curve.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "x1": accuracy[0],
                    "y1": accuracy[1],
                    "x2": accuracy[2],
                    "y2": accuracy[3],
                }
            )
            tqdm.write(
                f"step {step} gap {gap} loss {loss.item():.3f} digit accuracy x1/y1/x2/y2 "
                + " / ".join(f"{100 * a:.0f}" for a in accuracy)
            )
    return curve


def main(argv: list[str] | None = None) -> None:
    (config,) = HfArgumentParser(LookupToyConfig).parse_args_into_dataclasses(args=argv)
    curve = train_lookup_toy(config)
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(
            config.out, json.dumps({"config": asdict(config), "curve": curve}, indent=2).encode()
        )


if __name__ == "__main__":
    main()
