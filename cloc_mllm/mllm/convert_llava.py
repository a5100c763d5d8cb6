"""Original LLaVA-1.5 checkpoints (``LlavaLlamaForCausalLM``) -> transformers' Llava layout.

The original layout is a Llama checkpoint whose config also carries ``mm_vision_tower``,
``mm_hidden_size``, ``mm_projector_type``, ``mm_vision_select_layer``... and whose weights also hold
``model.mm_projector.*`` (``nn.Sequential``: linear layers at even indices) and, when the tower was
tuned, ``model.vision_tower.vision_tower.vision_model.*``. The tower itself comes from
``mm_vision_tower`` (or ``--vision_tower``, since hub ids cannot be fetched offline).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cloc_mllm.atomic_io import atomic_output_dir
from cloc_mllm.mllm.builder import LlavaBuildArgs, assemble_llava, load_vision_tower
from cloc_mllm.mllm.projector import projector_depth

_PROJECTOR = re.compile(r"^model\.mm_projector\.(?:(\d+)\.)?(weight|bias)$")
_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
_LLAVA_ONLY_KEYS = {
    "architectures", "model_type", "image_aspect_ratio", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "tokenizer_model_max_length", "tokenizer_padding_side", "use_mm_proj", "_name_or_path", "transformers_version",
}  # fmt: skip


def read_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """All weight shards of ``src`` (safetensors, or ``.bin`` read with ``weights_only``)."""
    files = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(
            load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)
        )
    return state


def split_state_dict(state: dict[str, torch.Tensor], projector_type: str) -> tuple[dict, dict, dict]:
    """(causal-LM weights, projector weights in this package's naming, tuned-tower weights)."""
    llm, projector, tower = {}, {}, {}
    depth = projector_depth(projector_type)
    for key, value in state.items():
        if match := _PROJECTOR.match(key):
            index, kind = int(match.group(1) or 0), match.group(2)
            projector[_projector_key(index, kind, depth)] = value
        elif key.startswith(_TOWER_PREFIX):
            tower[key[len(_TOWER_PREFIX) :]] = value
        elif not key.startswith("model.vision_tower."):
            llm[key] = value
    if not projector:
        raise ValueError("no model.mm_projector.* weights: not a LLaVA-1.5 checkpoint")
    return llm, projector, tower


def _projector_key(index: int, kind: str, depth: int) -> str:
    if depth == 1:
        return f"linear_1.{kind}"
    if depth == 2:
        return f"linear_{index // 2 + 1}.{kind}"
    return f"layers.{index}.{kind}"


def convert_llava_checkpoint(src: str | Path, out_dir: str | Path, vision_tower: str | None = None) -> Path:
    """Write ``src`` (original LLaVA-1.5 layout) as a Llava checkpoint + processor in ``out_dir``."""
    src = Path(src)
    config = json.loads((src / "config.json").read_text())
    missing = [k for k in ("mm_vision_tower", "mm_hidden_size") if k not in config]
    if missing:
        raise ValueError(f"{src}/config.json lacks {missing}: not a LLaVA-1.5 checkpoint")
    args = LlavaBuildArgs(
        vision_tower=vision_tower or config["mm_vision_tower"],
        language_model=str(src),
        mm_projector_type=config.get("mm_projector_type", "linear"),
        mm_vision_select_layer=config.get("mm_vision_select_layer", -2),
        mm_vision_select_feature=config.get("mm_vision_select_feature", "patch"),
        image_aspect_ratio="pad" if config.get("image_aspect_ratio") == "pad" else "resize",
        model_max_length=config.get("tokenizer_model_max_length")
        or config.get("max_position_embeddings", 2048),
    )
    llm_state, projector_state, tower_state = split_state_dict(read_state_dict(src), args.mm_projector_type)
    text_config = LlamaConfig(
        **{k: v for k, v in config.items() if k not in _LLAVA_ONLY_KEYS and not k.startswith("mm_")}
    )
    with torch.device("meta"):
        llm = LlamaForCausalLM(text_config)
    llm.load_state_dict(llm_state, strict=True, assign=True)
    llm.tie_weights()
    tower = load_vision_tower(args.vision_tower)
    if tower_state:
        tower.load_state_dict(tower_state, strict=True)
    if tower.config.hidden_size != config["mm_hidden_size"]:
        raise ValueError(
            f"tower width {tower.config.hidden_size} != mm_hidden_size {config['mm_hidden_size']}"
        )
    model, processor = assemble_llava(args, tower, llm, AutoTokenizer.from_pretrained(src))
    result = model.model.multi_modal_projector.load_state_dict(projector_state, strict=False)
    pinned = {"linear_2.weight", "linear_2.bias"} if projector_depth(args.mm_projector_type) == 1 else set()
    if result.unexpected_keys or set(result.missing_keys) - pinned:  # linear: linear_2 stays the identity
        raise ValueError(f"projector weights do not fit {args.mm_projector_type}: {result}")
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)
