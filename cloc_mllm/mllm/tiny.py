"""Tiny towers and language models built from configs, for runs with nothing to download.

The main job and the tests finetune LLaVA on the synthetic world without any pretrained LLM: a small
Llama over the world's own tokenizer stands in for Vicuna, and a random CLIP tower stands in for a
CLOC/CLIP export when a test needs no pretraining.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)


def write_tiny_tower(
    out_dir: str | Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, seed: int = 0
) -> Path:
    """A random 2-layer ``CLIPVisionModel`` + crop-free ``CLIPImageProcessor``: what an exported tower looks like."""
    tiny_tower_model(image_size, patch_size, hidden_size, seed=seed).save_pretrained(out_dir)
    size = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size=size, crop_size=size, do_center_crop=False).save_pretrained(out_dir)
    return Path(out_dir)


def tiny_tower_model(
    image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> CLIPVisionModel:
    """A random ``CLIPVisionModel`` of the given shape (2 heads, MLP twice as wide)."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPVisionModel(config)


def write_tiny_llm(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """A random Llama over ``tokenizer``'s vocabulary, saved with the tokenizer (an LLM directory)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
