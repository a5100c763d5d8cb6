"""LoRA / QLoRA on the language model of a LLaVA, and merging adapters back into a plain checkpoint.

Adapters go on every linear layer of the language model (LLaVA's ``find_all_linear_names``), the
projector (and an unfrozen tower) are saved whole through ``modules_to_save``. A LoRA output dir holds
the adapter, the processor and ``mllm_build_args.json``; since the builder is deterministic, the base
is rebuilt from those arguments and the adapter merged into it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoProcessor, BitsAndBytesConfig, LlavaForConditionalGeneration, ProcessorMixin

from cloc_mllm.atomic_io import atomic_output_dir
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava

PROJECTOR = "multi_modal_projector"


def quantization_config(bits: int, quant_type: str, double_quant: bool, compute_dtype: torch.dtype):
    """bitsandbytes config for ``bits`` in (4, 8); None for 16/32."""
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits not in (16, 32):
        raise ValueError(f"bits must be 4, 8, 16 or 32, got {bits}")
    return None


def language_model_linear_names(model: LlavaForConditionalGeneration) -> list[str]:
    """Leaf names of the linear layers inside the language model (q_proj, up_proj, ...)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
    }
    return sorted(names)


def apply_lora(
    model: LlavaForConditionalGeneration,
    r: int,
    alpha: int,
    dropout: float,
    bias: str = "none",
    train_vision_tower: bool = False,
    quantized: bool = False,
    gradient_checkpointing: bool = False,
    train_region_encoder: bool = False,
    trainable_token_ids: Sequence[int] = (),
) -> PeftModel:
    """Wrap ``model`` with LoRA on the language model; only adapters, projector (and tower) train, and
    the embedding rows of ``trainable_token_ids`` (added tokens an answer writes, the cells: LoRA on the
    linear layers cannot move a token's own embedding, and peft ties a tied LM head's rows to them)."""
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    leaves = "|".join(re.escape(n) for n in language_model_linear_names(model))
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=rf"^model\.language_model\..*\.({leaves})$",
        modules_to_save=[PROJECTOR]
        + (["vision_tower"] if train_vision_tower else [])
        + (["region_encoder"] if train_region_encoder else []),
        trainable_token_indices=_token_rows(model, list(trainable_token_ids)),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _token_rows(model: LlavaForConditionalGeneration, ids: list[int]) -> list[int] | dict[str, list[int]] | None:
    """peft's ``trainable_token_indices`` for ``ids``: the input embedding's rows (peft keeps a tied LM head
    tied to them), or an untied LM head's rows as well, so the LLM can also learn to *write* those tokens."""
    if not ids:
        return None
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or outputs.weight is inputs.weight:
        return ids
    leaf = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    return {leaf[id(inputs)]: ids, leaf[id(outputs)]: ids}


def load_merged(
    adapter_dir: str | Path, dtype: torch.dtype | None = None
) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """Rebuild the base of a LoRA output dir, load its adapter and merge: a plain (cloc_)llava model."""
    args = LlavaBuildArgs.load(adapter_dir)
    base, _ = build_llava(args, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return merged, AutoProcessor.from_pretrained(adapter_dir)


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write the merged model and its processor to ``out_dir`` (loadable without peft or this package)."""
    model, processor = load_merged(adapter_dir, dtype=dtype)
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
