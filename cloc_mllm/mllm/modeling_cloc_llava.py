"""``cloc_llava``: transformers' Llava plus what plain Llava cannot hold.

Used only when needed -- a projector deeper than two layers (``mlp3x_gelu``...), patch-position
embeddings (``PatchPositionProjector``), a column-major copy of the patch tokens (``ColumnMajorCopy``) or
region prompts (Ferret*, see ``region_prompts.py``); everything
else is saved as a plain ``llava`` checkpoint. Importing
this module registers the type with ``AutoConfig`` and ``AutoModelForImageTextToText``.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from cloc_mllm.mllm.projector import (
    ColumnMajorCopy,
    MLPProjector,
    PatchPositionProjector,
    checked_patch_order,
    is_plain_llava_projector,
    projector_depth,
)
from cloc_mllm.mllm.region_prompts import NO_BOX, RegionEncoder
from cloc_mllm.prompter import restore_geometry


@strict
class ClocLlavaConfig(LlavaConfig):
    """Llava config + ``mm_projector_type`` (LLaVA's name) and the region-prompt settings.

    ``patch_position``: the projector adds learned row / column embeddings to the patch tokens, of unit
    norm or scaled to each token's norm (``patch_position_scale``: ``unit`` | ``token``).
    ``patch_order``: ``row`` (the tower's raster order) or ``row_column`` (then the patches again,
    column-major; ``image_seq_length`` counts both).
    ``prompter_config`` is the CLOC ``PrompterConfig`` as a dict, ``region_embed_dim`` the CLOC
    projection dim the Prompter outputs, ``region_token_id`` the id of ``<region>``.
    """

    model_type = "cloc_llava"

    mm_projector_type: str = "mlp2x_gelu"
    patch_position: bool = False
    patch_position_scale: str = "unit"
    patch_order: str = "row"
    region_prompts: bool = False
    prompter_config: dict | None = None
    region_embed_dim: int = 0
    region_token_id: int = -1


class ClocLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """Llava whose projector is built by name and which can read ``<region>`` tokens.

    ``forward(..., region_boxes)``: region_boxes (I, K, 4) normalised xyxy in the model frame, one row per
    image in ``pixel_values``, padded with ``NO_BOX``; its valid rows fill the ``<region>`` tokens in order.
    """

    config_class = ClocLlavaConfig

    def __init__(self, config: ClocLlavaConfig):
        super().__init__(config)
        if not is_plain_llava_projector(config.mm_projector_type):
            self.model.multi_modal_projector = MLPProjector(
                config.vision_config.hidden_size,
                config.text_config.hidden_size,
                projector_depth(config.mm_projector_type),
                bias=config.multimodal_projector_bias,
            )
        self.model.multi_modal_projector = with_patch_layout(self.model.multi_modal_projector, config)
        if config.region_prompts:
            self.model.region_encoder = make_region_encoder(config)
        self.post_init()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        super().initialize_weights()
        # ``self.model`` is a sub-model (LlavaModel) that applies its own ``_init_weights``, which knows
        # nothing of the region encoder: its Prompter's unsaved geometry buffers are rebuilt here
        if getattr(self.model, "region_encoder", None) is not None:
            for module in self.model.region_encoder.modules():
                restore_geometry(module)

    def forward(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        region_boxes: Tensor | None = None,
        **kwargs,
    ):
        if region_boxes is None and self._region_encoder_trains(pixel_values, input_ids):
            # a batch without <region> still runs the region encoder (on a padded row, so with zero
            # gradient): every rank's backward must reach the same parameters, or DeepSpeed's (and
            # DDP's) bucketed gradient reductions disagree in size between ranks
            region_boxes = torch.full((pixel_values.shape[0], 1, 4), NO_BOX, device=pixel_values.device)
        # Only the prefill sees pixel_values; later decoding steps are plain Llava steps.
        if region_boxes is not None and pixel_values is not None and input_ids is not None:
            inputs_embeds = self._embed_with_regions(input_ids, pixel_values, region_boxes)
            return super().forward(inputs_embeds=inputs_embeds, **kwargs)
        return super().forward(
            input_ids=input_ids, pixel_values=pixel_values, inputs_embeds=inputs_embeds, **kwargs
        )

    def _region_encoder_trains(self, pixel_values: Tensor | None, input_ids: Tensor | None) -> bool:
        encoder = getattr(self.model, "region_encoder", None)
        return (
            encoder is not None and self.training and torch.is_grad_enabled()
            and pixel_values is not None and input_ids is not None
            and any(p.requires_grad for p in encoder.parameters())
        )  # fmt: skip

    def _embed_with_regions(self, input_ids: Tensor, pixel_values: Tensor, region_boxes: Tensor) -> Tensor:
        """Token embeddings (B, L, H) with image features and region embeddings in their placeholders.

        One tower pass serves both: the selected layer feeds the projector, the last layer the Prompter.
        """
        config = self.config
        tower = self.model.vision_tower(
            pixel_values.to(self.model.vision_tower.dtype), output_hidden_states=True
        )
        selected = tower.hidden_states[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        embeds = self.get_input_embeddings()(input_ids)
        image_features = self.model.multi_modal_projector(selected).to(embeds.dtype)  # (I, N, H)
        embeds = _fill(embeds, input_ids == config.image_token_id, image_features.flatten(0, 1), "image")
        valid = region_boxes[..., 0] != NO_BOX  # (I, K)
        regions = self.model.region_encoder(tower.last_hidden_state[:, 1:], region_boxes)[valid]  # (R, H)
        return _fill(embeds, input_ids == config.region_token_id, regions.to(embeds.dtype), "region")


def _fill(embeds: Tensor, mask: Tensor, features: Tensor, kind: str) -> Tensor:
    """Put ``features`` (T, H) at the T positions of ``mask`` (B, L), in reading order."""
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(
            f"{int(mask.sum())} {kind} tokens in the text but {features.shape[0]} {kind} features"
        )
    return embeds.masked_scatter(mask.unsqueeze(-1), features)


def patch_grid(config: ClocLlavaConfig) -> int:
    """Patches per side of the config's vision tower."""
    return config.vision_config.image_size // config.vision_config.patch_size


def with_patch_layout(projector: torch.nn.Module, config: ClocLlavaConfig) -> torch.nn.Module:
    """``projector`` plus what the config says of the patch tokens' places: row / column embeddings
    (``patch_position``), then the column-major copy (``patch_order``), which so repeats them too."""
    if config.patch_position:
        projector = PatchPositionProjector(
            projector, patch_grid(config), config.text_config.hidden_size, config.patch_position_scale
        )
    if checked_patch_order(config.patch_order) == "row_column":
        projector = ColumnMajorCopy(projector, patch_grid(config))
    return projector


def make_region_encoder(config: ClocLlavaConfig) -> RegionEncoder:
    """The region encoder a ``cloc_llava`` config describes."""
    return RegionEncoder(
        config.prompter_config, patch_grid(config), config.region_embed_dim, config.text_config.hidden_size
    )


def region_features_trainable(model: torch.nn.Module, train_prompter: bool) -> None:
    """The region MLP always trains (like the projector); the Prompter only with the tower."""
    for name, param in model.named_parameters():
        if "region_encoder." in name and param.is_floating_point():
            param.requires_grad_(".prompter." not in name or train_prompter)


AutoConfig.register("cloc_llava", ClocLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(ClocLlavaConfig, ClocLlavaForConditionalGeneration, exist_ok=True)
