"""Building the model a run trains: from a preset or an HF CLIP checkpoint, matched to the tokenizer,
with the parameters its loss never reaches frozen (so DDP/ZeRO need no unused-parameter search and the
CLIP-only baseline provably trains no region parameter; it has no Prompter at all)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from ..batch import CLOCBatch
from ..configuration_cloc import CLOCConfig
from ..modeling_cloc import CLOCModel
from .config import PretrainConfig

logger = logging.getLogger(__name__)


def build_model(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> CLOCModel:
    """A freshly initialised CLOC model (seed the RNG first) for ``config`` and ``tokenizer``.

    From a preset, the text tower's vocabulary and special ids follow the tokenizer unless
    ``model_overrides`` sets them; from a CLIP checkpoint the tokenizer must fit its vocabulary.
    """
    mode = {"loss_mode": config.loss, "region_head": config.region_head}
    if config.init_from_clip:
        clash = sorted(set(config.model_overrides) & {"vision_config", "text_config", "projection_dim"})
        if clash:
            raise ValueError(
                f"model_overrides {clash} conflict with init_from_clip={config.init_from_clip!r}: "
                "the towers' shapes come from the CLIP checkpoint"
            )
        model = CLOCModel.from_clip(config.init_from_clip, **{**config.model_overrides, **mode})
    else:
        text = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        overrides = dict(config.model_overrides)
        overrides["text_config"] = {
            **{k: v for k, v in text.items() if v is not None},
            **overrides.get("text_config", {}),
        }
        model = CLOCModel(CLOCConfig.from_preset(config.preset, **{**overrides, **mode}))
    text_config = model.config.text_config
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but the text tower only "
            f"{text_config.vocab_size}; use the checkpoint's own tokenizer"
        )
    if tokenizer.eos_token_id != text_config.eos_token_id:
        raise ValueError(
            f"tokenizer {config.tokenizer!r} ends texts with id {tokenizer.eos_token_id} but the text tower "
            f"pools at eos_token_id={text_config.eos_token_id}"
        )
    return model


def load_model_weights(model: CLOCModel, model_dir: str | Path) -> None:
    """Load a ``save_pretrained`` directory's safetensors into ``model`` exactly (strict)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    model.load_state_dict(state, strict=True)


def _probe_batch(config: CLOCConfig, device: torch.device) -> CLOCBatch:
    """Two images with one region each: enough to build every branch of the loss's graph."""
    text = config.text_config
    size = config.vision_config.image_size
    ids = torch.tensor([[text.bos_token_id, text.eos_token_id]] * 2, device=device)
    ones = torch.ones_like(ids)
    return CLOCBatch(
        pixel_values=torch.zeros(2, 3, size, size, device=device),
        input_ids=ids,
        attention_mask=ones,
        region_boxes=torch.tensor([[[0.1, 0.1, 0.6, 0.6]], [[0.3, 0.2, 0.9, 0.8]]], device=device),
        region_input_ids=ids[:, None],
        region_attention_mask=ones[:, None],
        region_mask=torch.ones(2, 1, dtype=torch.bool, device=device),
    )


def freeze_unused_parameters(model: CLOCModel) -> list[str]:
    """Freeze (requires_grad False) every parameter the training loss has no gradient path to.

    Found by one backward pass over a dummy batch (RNG untouched): in ``loss_mode="clip"`` the region
    logit scale (no Prompter is built there), with an InfoNCE loss the SigLIP bias, with the RoIAlign
    head the Prompter's box prompt encoder. Every rank must call this (the loss gathers across ranks).
    """
    device = next(model.parameters()).device
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss = model(**_probe_batch(model.config, device), return_loss=True).loss
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    unused = [name for (name, p), grad in zip(params, grads) if grad is None]
    for name, p in params:
        if name in unused:
            p.requires_grad_(False)
    if unused:
        logger.info("frozen %d parameter tensors the loss does not reach: %s", len(unused), ", ".join(unused))
    return unused
