"""Shared fixtures: tiny CLOC configs so each test runs in seconds on two CPU cores."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_config():
    """A CLOC config smaller than the ``tiny`` preset: 32 px images, 4x4 patches, width 32."""
    from cloc_mllm import CLOCConfig

    return CLOCConfig.from_preset(
        "tiny",
        projection_dim=32,
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "max_position_embeddings": 16,
        },
        prompter_config={"hidden_size": 32, "intermediate_size": 64},
    )


def random_batch(config, batch_size=4, num_regions=3, text_len=8, seed=0):
    """A model batch with random pixels/tokens, EOS-terminated texts and valid random boxes."""
    from cloc_mllm.training.benchmark import synthetic_batch

    return synthetic_batch(config, batch_size, num_regions, text_len, text_len, seed=seed)
