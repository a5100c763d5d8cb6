"""Tiny models built from configs, shared by the tests (nothing to download, seconds on two cores)."""

from __future__ import annotations


def tiny_cloc_config(
    width: int = 32,
    layers: int = 2,
    vocab_size: int = 64,
    max_positions: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
):
    """A CLOC config smaller than the ``tiny`` preset: ``width``-wide towers of ``layers`` layers (2
    heads, MLPs twice as wide) and Prompter."""
    from cloc_mllm import CLOCConfig

    def tower(num_layers: int) -> dict:
        return {
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 2,
        }

    return CLOCConfig.from_preset(
        "tiny",
        projection_dim=width,
        vision_config={**tower(layers), "image_size": image_size, "patch_size": patch_size},
        text_config={**tower(layers), "vocab_size": vocab_size,
                     "max_position_embeddings": max_positions},
        prompter_config={"hidden_size": width, "intermediate_size": 2 * width},
    )  # fmt: skip
