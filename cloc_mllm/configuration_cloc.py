"""Configuration of CLOC: two HF CLIP towers, the Prompter, and the training-loss choices.

The towers keep transformers' own ``CLIPVisionConfig`` / ``CLIPTextConfig`` so the image encoder exports
as a plain ``CLIPVisionModel``. Presets live as json files in ``cloc_mllm/presets/``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, ClassVar

from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig

PRESETS = ("tiny", "vit-b-16", "vit-l-14")

# the trained region heads and the training objectives, named once (training configs and the model use these)
TRAINED_REGION_HEADS = ("prompter", "roialign")
LOSS_MODES = ("cloc", "clip", "clip_phrases")
_CHOICES = {
    "region_head": TRAINED_REGION_HEADS,
    "contrastive_loss": ("infonce", "siglip"),
    "grounding_loss": ("l2", "l1", "giou"),
    "loss_mode": LOSS_MODES,
    "region_negative_filter": ("tokens", "embedding"),
}
_PROMPTER_CHOICES = {
    "attention": ("cross", "full"),
    "box_attention_bias": ("none", "coverage"),
    "grounding_attention_bias": ("none", "similarity"),
}


def _check_choices(config: Any, choices: dict[str, tuple[str, ...]]) -> None:
    name = type(config).__name__
    for field, allowed in choices.items():
        value = getattr(config, field)
        if value not in allowed:
            raise ValueError(f"{name}.{field} must be one of {allowed}, got {value!r}")


def _check_positive(config: Any, fields: tuple[str, ...]) -> None:
    name = type(config).__name__
    for field in fields:
        value = getattr(config, field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}.{field} must be a positive number, got {value!r}")


class PrompterConfig(PreTrainedConfig):
    """The Prompter: prompt tokens (box corners or a text embedding) attending over ViT tokens.

    ``attention="cross"`` lets only the prompt tokens query [prompt; image] keys, so K boxes cost
    O(K·N) and the image tokens' keys/values are computed once per image. ``attention="full"`` is the
    paper's literal layer: self-attention over [prompt; image] run per region, then pooled over all
    tokens (O(K·(P+N)²)). ``box_attention_bias="coverage"`` adds a learned bias favouring patches the box
    covers, a cheap prior that makes region embeddings local from the first step (see docs/architecture.md).
    ``grounding_attention_bias="similarity"`` biases a text prompt's attention towards the patches whose
    own region embedding matches the text, so grounding reuses what the region loss learns; it encodes
    every cell of a grid as a box, and ``grounding_cell_size`` (patches per cell side) sizes that grid:
    1 encodes each patch, 2 a quarter as many 2x2-patch cells (each patch then reads its cell's value).
    """

    model_type: ClassVar[str] = "cloc_prompter"
    base_config_key: ClassVar[str] = "prompter_config"

    hidden_size: int = 768  # must equal the vision tower width
    intermediate_size: int = 3072
    num_attention_heads: int = 1
    attention: str = "cross"
    box_attention_bias: str = "coverage"
    box_bias_init: float = 4.0
    pe_max_frequency: float = 0.0  # 0 = twice the patch grid side (cycles per image)
    pe_add_to_values: bool = True
    grounding_hidden_size: int = 0  # 0 = hidden_size
    grounding_attention_bias: str = "similarity"
    box_content_token: bool = True
    grounding_bias_init: float = 10.0
    grounding_cell_size: int = 1  # patches per side of the cells the similarity bias encodes
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_choices(self, _PROMPTER_CHOICES)
        _check_positive(self, ("hidden_size", "intermediate_size", "num_attention_heads", "grounding_cell_size"))
        if not isinstance(self.grounding_cell_size, int):
            raise ValueError(f"PrompterConfig.grounding_cell_size must be an integer, got {self.grounding_cell_size!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"PrompterConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )


class CLOCConfig(PreTrainedConfig):
    """CLOC = CLIP towers + Prompter + grounding head, trained with L_clip + λ (L_region + L_ground)."""

    model_type: ClassVar[str] = "cloc"
    sub_configs_defaults: ClassVar[dict] = {
        "vision_config": CLIPVisionConfig,
        "text_config": CLIPTextConfig,
        "prompter_config": PrompterConfig,
    }

    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    prompter_config: dict | PrompterConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592  # ln(1 / 0.07), CLIP's initial temperature
    region_logit_scale_init_value: float = 2.6592
    logit_bias_init_value: float = -10.0  # SigLIP only
    # cloc | clip (the baseline) | clip_phrases (the baseline with the region phrases as extra texts of
    # their whole image: as much text supervision as CLOC, none of it tied to a box)
    loss_mode: str = "cloc"
    contrastive_loss: str = "infonce"
    region_head: str = "prompter"
    grounding_loss: str = "giou"  # L1 + GIoU (DETR); "l2" is the plain regression
    region_loss_weight: float = 1.0
    grounding_loss_weight: float = 1.0
    text_similarity_threshold: float = 0.9
    region_negative_filter: str = "tokens"  # caption similarity on token bags, or on text embeddings
    roialign_output_size: int = 2
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_choices(self, _CHOICES)
        _check_positive(self, ("projection_dim", "roialign_output_size"))
        if not 0.0 < self.text_similarity_threshold <= 1.0:
            raise ValueError(
                "CLOCConfig.text_similarity_threshold must lie in (0, 1], "
                f"got {self.text_similarity_threshold!r}"
            )
        if self.prompter_config.hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"CLOCConfig.prompter_config.hidden_size ({self.prompter_config.hidden_size}) must equal "
                f"vision_config.hidden_size ({self.vision_config.hidden_size}): the Prompter runs at the ViT width"
            )
        if self.num_patches_per_side % self.prompter_config.grounding_cell_size:
            raise ValueError(
                f"CLOCConfig.prompter_config.grounding_cell_size ({self.prompter_config.grounding_cell_size}) "
                f"must divide the patch grid's side ({self.num_patches_per_side})"
            )

    @property
    def num_patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CLOCConfig:
        """Build a config from a bundled preset json (``tiny``, ``vit-b-16``, ``vit-l-14``).

        ``overrides`` replace top-level fields; nested ones take a dict, merged into the preset's.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown CLOC preset {name!r}; available: {', '.join(PRESETS)}")
        text = resources.files("cloc_mllm.presets").joinpath(f"{name}.json").read_text()
        values = json.loads(text)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return cls(**values)
