"""``cloc_llava``: transformers' Llava plus what plain Llava cannot hold.

Used only when needed -- a projector deeper than two layers (``mlp3x_gelu``...), patch-position
embeddings (``PatchPositionProjector``), a column-major copy of the patch tokens (``ColumnMajorCopy``),
cells that point at the image's patch tokens (``PatchPointer``) or region prompts (Ferret*, see
``region_prompts.py``); everything else is saved as a plain ``llava`` checkpoint. Importing
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
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from cloc_mllm.mllm.projector import (
    ColumnMajorCopy,
    MLPProjector,
    PatchPointer,
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
    ``patch_pointer``: the cells ``cell_token_ids`` (raster order, one per patch) also point at the
    record's own patch tokens (``PatchPointer``).
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
    patch_pointer: bool = False
    cell_token_ids: list[int] | None = None


class ClocLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """Llava whose projector is built by name and which can read ``<region>`` tokens.

    ``forward(..., region_boxes)``: region_boxes (I, K, 4) normalised xyxy in the model frame, one row per
    image in ``pixel_values``, padded with ``NO_BOX``; its valid rows fill the ``<region>`` tokens in order.
    ``forward(..., patch_tokens)`` (patch pointers): each sequence's projected patch tokens (B, N, H),
    zeros for a sequence without an image; computed from ``pixel_values`` when not given, and handed to
    every decoding step by ``generate``, which sees the image only once.
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
        patch_tokens: Tensor | None = None,
        **kwargs,
    ):
        if self.config.patch_pointer:
            return self._forward_pointing(input_ids, pixel_values, inputs_embeds, patch_tokens, **kwargs)
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

    def generate(self, input_ids: Tensor | None = None, pixel_values: Tensor | None = None, **kwargs):
        if self.config.patch_pointer and pixel_values is not None:
            # every decoding step scores the cells against the image: its patch tokens stay in the kwargs
            kwargs["patch_tokens"] = self.patch_tokens_per_sequence(input_ids, self.projected_images(pixel_values))
            pixel_values = None
        return super().generate(input_ids=input_ids, pixel_values=pixel_values, **kwargs)

    def projected_images(self, pixel_values: Tensor) -> Tensor:
        """Image tokens (I, N, H) of ``pixel_values`` (I, 3, S, S), as plain Llava makes them."""
        features = self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return torch.stack(list(features))

    def patch_tokens_per_sequence(self, input_ids: Tensor, images: Tensor) -> Tensor:
        """(B, N, H): the image tokens of each sequence's image (the I images belong, in order, to the
        sequences holding ``<image>``), zeros for a sequence without one."""
        has_image = (input_ids == self.config.image_token_id).any(-1)  # (B,)
        if int(has_image.sum()) != images.shape[0]:
            raise ValueError(f"{int(has_image.sum())} sequences hold <image> but {images.shape[0]} images were given")
        table = images.new_zeros(input_ids.shape[0], *images.shape[1:])
        table[has_image] = images
        return table

    def _forward_pointing(
        self,
        input_ids: Tensor | None,
        pixel_values: Tensor | None,
        inputs_embeds: Tensor | None,
        patch_tokens: Tensor | None,
        mm_encoder_outputs: dict | None = None,
        logits_to_keep: int | Tensor = 0,
        labels: Tensor | None = None,
        **kwargs,
    ) -> LlavaCausalLMOutputWithPast:
        """Llava's forward with cells that carry, and are scored against, their image's patch tokens."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("a patch-pointing model reads input_ids: its cells and images are found there")
        if patch_tokens is None and (pixel_values is not None or mm_encoder_outputs):
            images = (
                torch.stack(list(mm_encoder_outputs["image"].pooler_output))
                if mm_encoder_outputs
                else self.projected_images(pixel_values)
            )  # (I, N, H)
            patch_tokens = self.patch_tokens_per_sequence(input_ids, images)
        pointer = self.model.multi_modal_projector
        cell_ids = torch.tensor(self.config.cell_token_ids, device=input_ids.device)
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, H)
        cell = torch.searchsorted(cell_ids, input_ids).clamp(max=len(cell_ids) - 1)  # (B, L)
        is_cell = cell_ids[cell] == input_ids
        if patch_tokens is None:
            if is_cell.any() or (input_ids == self.config.image_token_id).any():
                raise ValueError("cells and <image> need the image: give pixel_values or patch_tokens")
        else:
            patch_tokens = patch_tokens.to(embeds.dtype)
            image_mask = input_ids == self.config.image_token_id
            if image_mask.any():  # the prefill; later decoding steps hold no image tokens
                embeds = _fill(embeds, image_mask, patch_tokens[image_mask.any(-1)].flatten(0, 1), "image")
            pointed = patch_tokens.gather(1, cell[..., None].expand(-1, -1, embeds.shape[-1]))  # (B, L, H)
            embeds = embeds + is_cell[..., None] * pointer.carried(pointed)
        outputs = self.model(inputs_embeds=embeds, **kwargs)
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # (B, n, H) or (K, H)
        logits = self.lm_head(hidden)
        if patch_tokens is not None:
            if hidden.dim() == 3:  # (B, n, H): positions of every sequence, scored against its own patches
                scores = pointer.scores(hidden, patch_tokens)
            else:  # a boolean mask kept K positions (K, H): each against its sequence's patches
                rows = logits_to_keep.nonzero()[:, 0]
                scores = pointer.scores(hidden[:, None], patch_tokens[rows])[:, 0]
            logits = logits.index_add(-1, cell_ids, scores.to(logits.dtype))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return LlavaCausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip

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
    (``patch_position``), then the column-major copy (``patch_order``), which so repeats them too, then
    the pointer's weights (``patch_pointer``)."""
    if config.patch_position:
        projector = PatchPositionProjector(
            projector, patch_grid(config), config.text_config.hidden_size, config.patch_position_scale
        )
    if checked_patch_order(config.patch_order) == "row_column":
        projector = ColumnMajorCopy(projector, patch_grid(config))
    if config.patch_pointer:
        projector = PatchPointer(projector, config.text_config.hidden_size)
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
