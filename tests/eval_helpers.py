"""Shared pieces of the evaluation tests: a tiny synthetic world and tiny models over it."""

from __future__ import annotations

from pathlib import Path

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.data.tokenizer import load_tokenizer
from tests.builders import tiny_cloc_config

# Non-square images, so a box mapped without the transform's inverse would score wrong under "pad".
WORLD = SyntheticWorldConfig(
    num_train=2, num_val=4, num_test=4, image_size=48, min_aspect=0.6, max_aspect=1.6
)


def make_world(out: Path) -> Path:
    write_world(out, WORLD, formats=["refer", "flickr30k", "coco", "tokenizer"])
    return out


def tiny_cloc(tokenizer):
    from cloc_mllm import CLOCModel

    return CLOCModel(tiny_cloc_config(layers=1, vocab_size=len(tokenizer), max_positions=32))


def save_tiny_cloc(world: Path, out: Path) -> Path:
    tokenizer = load_tokenizer(world / "tokenizer")
    tiny_cloc(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save_tiny_llava(world: Path, out: Path) -> Path:
    """A random tiny Llama + tiny CLIP tower assembled by the project's LLaVA builder, saved."""
    from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
    from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower

    tokenizer = load_tokenizer(world / "tokenizer")
    tower = write_tiny_tower(out / "tower")
    llm = write_tiny_llm(out / "llm", tokenizer, hidden_size=32, num_layers=1, max_positions=256)
    model, processor = build_llava(
        LlavaBuildArgs(vision_tower=str(tower), language_model=str(llm), model_max_length=256)
    )
    model.save_pretrained(out / "mllm")
    processor.save_pretrained(out / "mllm")
    return out / "mllm"
