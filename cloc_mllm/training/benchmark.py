"""The pretraining benchmark's random batch (``bench/pretrain_step.py`` and ``bench/common.py``): shapes
of a real CLOC training batch with every region valid, the most region work a step can have."""

from __future__ import annotations

import torch
from torch import Tensor

from ..configuration_cloc import CLOCConfig


def synthetic_batch(
    config: CLOCConfig,
    batch_size: int,
    num_regions: int,
    text_len: int,
    region_text_len: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Tensor]:
    """Random pixels (B, 3, S, S), EOS-terminated captions (B, L) and regions: boxes (B, M, 4) normalised
    xyxy, phrases (B, M, Lr), all valid. Seeded, so every call gives the same batch."""
    g = torch.Generator().manual_seed(seed)
    size, text = config.vision_config.image_size, config.text_config
    text_len = min(text_len, text.max_position_embeddings)
    ids = torch.randint(4, text.vocab_size - 1, (batch_size, text_len), generator=g)
    ids[:, -1] = text.eos_token_id
    region_ids = torch.randint(
        4, text.vocab_size - 1, (batch_size, num_regions, region_text_len), generator=g
    )
    region_ids[..., -1] = text.eos_token_id
    xy = torch.rand(batch_size, num_regions, 2, generator=g) * 0.6
    wh = torch.rand(batch_size, num_regions, 2, generator=g) * 0.35 + 0.05
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "region_boxes": torch.cat([xy, xy + wh], dim=-1),
        "region_input_ids": region_ids,
        "region_attention_mask": torch.ones_like(region_ids),
        "region_mask": torch.ones(batch_size, num_regions, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()}
