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
    g = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    vocab, eos = config.text_config.vocab_size, config.text_config.eos_token_id
    ids = torch.randint(4, vocab, (batch_size, text_len), generator=g)
    ids[:, -1] = eos
    region_ids = torch.randint(4, vocab, (batch_size, num_regions, text_len), generator=g)
    region_ids[..., -1] = eos
    xy = torch.rand(batch_size, num_regions, 2, generator=g) * 0.6
    wh = torch.rand(batch_size, num_regions, 2, generator=g) * 0.35 + 0.05
    return {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "region_boxes": torch.cat([xy, xy + wh], dim=-1),
        "region_input_ids": region_ids,
        "region_attention_mask": torch.ones_like(region_ids),
        "region_mask": torch.ones(batch_size, num_regions, dtype=torch.bool),
    }
