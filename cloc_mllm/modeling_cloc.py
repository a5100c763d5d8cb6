"""CLOCModel: CLIP's two towers plus promptable region embeddings and a grounding head.

The towers are transformers' own ``CLIPVisionModel`` / ``CLIPTextModel`` and the projections keep
CLIPModel's names, so an HF CLIP checkpoint loads as-is (``from_clip``) and the image tower exports as
a plain ``CLIPVisionModel`` (``export_vision_tower``) with no conversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_cloc import TRAINED_REGION_HEADS, CLOCConfig
from .losses import CLOCLoss, token_signatures
from .prompter import Prompter, RoIAlignRegionHead, init_prompter_state, roi_pool_tokens

# the trained heads (configuration_cloc) and two parameter-free read-outs of a CLIP tower:
# clip_roialign pools the last layer's patch outputs (the paper's CLIP baseline), clip_maskclip pools
# MaskCLIP's value path of the last layer (``get_value_tokens``)
CLIP_READOUTS = ("clip_roialign", "clip_maskclip")
REGION_HEADS = (*TRAINED_REGION_HEADS, *CLIP_READOUTS)


@dataclass
class CLOCOutput(ModelOutput):
    """Embeddings are L2-normalised; region tensors are flattened over the valid regions (R, ...)."""

    loss: Tensor | None = None
    loss_clip: Tensor | None = None
    loss_region: Tensor | None = None
    loss_ground: Tensor | None = None
    region_weight: Tensor | None = None
    image_embeds: Tensor | None = None
    text_embeds: Tensor | None = None
    region_embeds: Tensor | None = None
    region_text_embeds: Tensor | None = None
    pred_boxes: Tensor | None = None
    grounding_logits: Tensor | None = None  # (R, N) the grounding attention bias over patches
    region_text_signatures: Tensor | None = None
    logits_per_image: Tensor | None = None


class CLOCPreTrainedModel(PreTrainedModel):
    config_class = CLOCConfig
    base_model_prefix = "cloc"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        config = self.config
        if isinstance(module, CLOCModel):
            std = config.initializer_factor
            init.normal_(module.visual_projection.weight, std=module.vision_width**-0.5 * std)
            init.normal_(module.text_projection.weight, std=module.text_width**-0.5 * std)
            init.constant_(module.logit_scale, config.logit_scale_init_value)
            init.constant_(module.region_logit_scale, config.region_logit_scale_init_value)
            init.constant_(module.logit_bias, config.logit_bias_init_value)
        else:
            init_prompter_state(module)


class CLOCModel(CLOCPreTrainedModel):
    """CLIP towers + Prompter (box -> region embedding, text -> box) + CLOC's losses."""

    def __init__(self, config: CLOCConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_width = config.vision_config.hidden_size
        self.text_width = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_width, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.region_logit_scale = nn.Parameter(torch.tensor(config.region_logit_scale_init_value))
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init_value))
        # Only CLOC's loss trains a region path: a CLIP-only or control model carries no Prompter (its
        # regions are read out of the tower, ``clip_roialign`` / ``clip_maskclip``), and the RoIAlign
        # head exists only where it is the trained head.
        localized = config.loss_mode == "cloc"
        self.prompter = (
            Prompter(config.prompter_config, config.num_patches_per_side, config.projection_dim) if localized else None
        )
        self.roialign_head = (
            RoIAlignRegionHead(self.vision_width, config.projection_dim, config.roialign_output_size)
            if localized and config.region_head == "roialign"
            else None
        )
        self.loss_fn = CLOCLoss(
            contrastive=config.contrastive_loss,
            grounding=config.grounding_loss,
            region_weight=config.region_loss_weight,
            grounding_weight=config.grounding_loss_weight,
            text_similarity_threshold=config.text_similarity_threshold,
            grid_size=config.num_patches_per_side,
        )
        self.post_init()

    # ----- encoders -------------------------------------------------------------------------------
    def encode_image(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """pixel_values (B, 3, H, W) -> (image embeddings (B, D) normalised, patch tokens (B, N, C))."""
        out = self.vision_model(pixel_values=pixel_values)
        embeds = F.normalize(self.visual_projection(out.pooler_output), dim=-1)
        return embeds, out.last_hidden_state[:, 1:]

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised image embeddings."""
        return self.encode_image(pixel_values)[0]

    def get_vision_tokens(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, C) last-layer patch tokens (no CLS): compute once, reuse for any boxes."""
        return self.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]

    def get_value_tokens(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, C) MaskCLIP's dense read-out: each patch through the last layer's
        value and output projections only (``out_proj(v_proj(layer_norm1(x)))``, x = the last layer's
        input), no query-key mixing, residual or MLP.

        Why: under the CLIP-only loss just the CLS row of the last layer reaches the loss, so that
        layer's patch outputs get no gradient at all, while its value path is trained (the CLS output
        is an attention-weighted sum of value-projected patches). A region pooled from these tokens is
        a part of what the trained image embedding is made of (Zhou et al., ECCV 2022).
        """
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        last = self.vision_model.encoder.layers[-1]
        x = last.layer_norm1(out.hidden_states[-2][:, 1:])  # (B, N, C) the last layer's patch inputs
        return last.self_attn.out_proj(last.self_attn.v_proj(x))

    def get_region_tokens(self, pixel_values: Tensor, head: str | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, N, C): the patch tokens ``head`` pools, computed once for any boxes."""
        if (head or self.config.region_head) == "clip_maskclip":
            return self.get_value_tokens(pixel_values)
        return self.get_vision_tokens(pixel_values)

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, L) -> (B, D) L2-normalised text embeddings (pooled at the EOS token, projected)."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)

    def encode_phrases(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(R, L) region phrases -> (R, D), like ``get_text_features`` but encoding each distinct phrase
        once, with no column that only padding fills, the short ones in a call of their own: the text
        tower is most of a region's cost, a batch's phrases repeat ("red circle") and most are far
        shorter than its longest (synthetic world: 6.7 tokens on average, the longest 15)."""
        input_ids, attention_mask, inverse = distinct_phrases(input_ids, attention_mask)  # (U, L'), (R,)
        if attention_mask is None:
            return self.get_text_features(input_ids)[inverse]
        short, cut = split_by_length(attention_mask)  # (U,) bool
        groups = [(short, cut), (~short, input_ids.shape[1])]
        order = torch.cat([rows.nonzero()[:, 0] for rows, _ in groups])  # (U,) unique rows, group by group
        embeds = torch.cat(
            [
                self.get_text_features(input_ids[rows, :n], attention_mask[rows, :n])
                for rows, n in groups
                if rows.any()
            ]
        )  # (U, D) in ``order``
        return embeds[torch.argsort(order)[inverse]]

    # ----- promptable embeddings -----------------------------------------------------------------
    def get_region_features(
        self,
        pixel_values: Tensor | None = None,
        boxes: Tensor | None = None,
        vision_tokens: Tensor | None = None,
        head: str | None = None,
        normalize: bool = True,
    ) -> Tensor:
        """Region embeddings for boxes (B, K, 4) normalised xyxy (model frame) -> (B, K, D).

        Pass ``vision_tokens`` from ``get_region_tokens(pixel_values, head)`` to reuse one image encode
        for any number of boxes. ``head``: None = the trained head of the config; a CLIP read-out
        (``CLIP_READOUTS``) = parameter-free, RoIAlign over the last layer's tokens
        (``clip_roialign``, the paper's CLIP baseline) or over MaskCLIP's value tokens
        (``clip_maskclip``), then post-layernorm -> CLIP's visual projection.
        """
        if boxes is None:
            raise ValueError("get_region_features needs boxes of shape (B, K, 4)")
        head = head or self.config.region_head
        if head not in REGION_HEADS:
            raise ValueError(f"unknown region head {head!r}; choose from {REGION_HEADS}")
        if vision_tokens is None:
            if pixel_values is None:
                raise ValueError("get_region_features needs pixel_values or vision_tokens")
            vision_tokens = self.get_region_tokens(pixel_values, head)
        if head == "prompter":
            embeds = self.require_prompter().encode_boxes(vision_tokens, boxes)
        elif head == "roialign":
            if self.roialign_head is None:
                raise ValueError(
                    f"this model was built with loss_mode={self.config.loss_mode!r}, "
                    f"region_head={self.config.region_head!r}; it has no trained RoIAlign head"
                )
            embeds = self.roialign_head(vision_tokens, boxes)
        else:
            pooled = roi_pool_tokens(vision_tokens, boxes, self.config.roialign_output_size)
            embeds = self.visual_projection(self.vision_model.post_layernorm(pooled))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def require_prompter(self) -> Prompter:
        """The Prompter, or an error saying why this model has none (it was not trained with CLOC's loss)."""
        if self.prompter is None:
            raise ValueError(
                f"this model was trained with loss_mode={self.config.loss_mode!r}: it has no Prompter (no "
                "region embedding or grounding head); read its regions with head='clip_maskclip' or 'clip_roialign'"
            )
        return self.prompter

    def ground(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        vision_tokens: Tensor | None = None,
        text_embeds: Tensor | None = None,
    ) -> Tensor:
        """One query per image: -> (B, 4) normalised xyxy in the model frame.

        Either tokenised queries (input_ids (B, L)) or their ``text_embeds`` (B, D) may be given.
        """
        if vision_tokens is None:
            vision_tokens = self.get_vision_tokens(pixel_values)
        if text_embeds is None:
            text_embeds = self.get_text_features(input_ids, attention_mask)
        return self.require_prompter().ground(vision_tokens, text_embeds[:, None])[:, 0]

    # ----- training ------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        region_boxes: Tensor | None = None,
        region_input_ids: Tensor | None = None,
        region_attention_mask: Tensor | None = None,
        region_mask: Tensor | None = None,
        return_loss: bool = False,
    ) -> CLOCOutput:
        """Image/text embeddings and, in ``loss_mode="cloc"`` with regions given, region embeddings
        and grounded boxes for the valid regions (in ``"clip_phrases"``, the control, only the region
        phrases' text embeddings). The arguments are the keys of ``cloc_mllm.batch.CLOCBatch``, the
        collator's output, exactly: a misspelt key is a TypeError naming it, never a CLOC run trained as CLIP.

        region_boxes (B, M, 4) normalised xyxy in the model frame; region_input_ids / attention_mask
        (B, M, Lr); region_mask (B, M) bool marks real regions (padding is False).
        """
        image_embeds, tokens = self.encode_image(pixel_values)
        text_embeds = self.get_text_features(input_ids, attention_mask)
        out = CLOCOutput(
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            logits_per_image=self.logit_scale.exp() * image_embeds @ text_embeds.t(),
        )
        use_regions = self.config.loss_mode == "cloc" and region_boxes is not None
        use_phrases = self.config.loss_mode == "clip_phrases" and region_input_ids is not None
        if (use_regions or use_phrases) and region_mask is None:
            rows = region_boxes if region_boxes is not None else region_input_ids  # (B, M, ...)
            region_mask = torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
        if use_regions:
            self._add_region_outputs(
                out, tokens, region_boxes, region_input_ids, region_attention_mask, region_mask
            )
        phrase_images = None
        if use_phrases:  # the phrases as extra texts of their whole image; no region embedding
            attn = region_attention_mask[region_mask] if region_attention_mask is not None else None
            out.region_text_embeds = (
                self.encode_phrases(region_input_ids[region_mask], attn)
                if region_mask.any()
                else image_embeds.new_zeros(0, image_embeds.shape[-1])
            )
            out.region_text_signatures = self._phrase_signatures(region_input_ids[region_mask], attn)
            phrase_images = region_mask.nonzero()[:, 0]  # (R,) the image row of each phrase
        if return_loss:
            terms = self.loss_fn(
                image_embeds,
                text_embeds,
                self.logit_scale,
                self.logit_bias if self.config.contrastive_loss == "siglip" else None,
                region_embeds=out.region_embeds,
                region_text_embeds=out.region_text_embeds,
                pred_boxes=out.pred_boxes,
                region_boxes=region_boxes,
                region_mask=region_mask,
                grounding_logits=out.grounding_logits,
                region_logit_scale=self.region_logit_scale,
                region_text_signatures=out.region_text_signatures,
                phrase_images=phrase_images,
            )
            out.loss, out.loss_clip = terms.loss, terms.loss_clip
            out.loss_region, out.loss_ground, out.region_weight = (
                terms.loss_region,
                terms.loss_ground,
                terms.region_weight,
            )
        return out

    def _add_region_outputs(
        self,
        out: CLOCOutput,
        tokens: Tensor,
        boxes: Tensor,
        region_ids: Tensor,
        region_attn: Tensor,
        mask: Tensor,
    ) -> None:
        region_embeds = self.get_region_features(boxes=boxes, vision_tokens=tokens)[mask]  # (R, D)
        if self.config.region_negative_filter == "tokens":
            out.region_text_signatures = self._phrase_signatures(
                region_ids[mask], region_attn[mask] if region_attn is not None else None
            )
        if mask.any():
            region_text = self.encode_phrases(
                region_ids[mask], region_attn[mask] if region_attn is not None else None
            )
        else:  # the text tower cannot run on zero sequences
            region_text = region_embeds.new_zeros(0, region_embeds.shape[-1])
        prompts = tokens.new_zeros(*mask.shape, region_text.shape[-1])  # (B, M, D)
        prompts[mask] = region_text.to(prompts.dtype)
        pred_boxes, grounding_logits = self.prompter.ground(tokens, prompts, return_logits=True)
        pred_boxes = pred_boxes[mask]  # (R, 4)
        if grounding_logits is not None:
            out.grounding_logits = grounding_logits[mask]  # (R, N)
        out.region_embeds, out.region_text_embeds, out.pred_boxes = region_embeds, region_text, pred_boxes

    def _phrase_signatures(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(R, L) -> (R, S) model-free fingerprints that tell identical phrases apart from the first step."""
        text = self.config.text_config
        special = [t for t in (text.pad_token_id, text.bos_token_id, text.eos_token_id) if t is not None]
        return token_signatures(input_ids, attention_mask, torch.tensor(special, device=input_ids.device))

    # ----- HF CLIP interoperability --------------------------------------------------------------
    def export_vision_tower(
        self, save_directory: str | os.PathLike, image_processor: CLIPImageProcessorPil | None = None
    ) -> None:
        """Write the image tower as a plain ``CLIPVisionModel`` + ``CLIPImageProcessor`` directory.

        The weights are the tower's own (HF CLIP names), so transformers alone loads the result.
        """
        self.vision_model.save_pretrained(save_directory, safe_serialization=True)
        processor = image_processor or default_image_processor(self.config)
        processor.save_pretrained(save_directory)

    @classmethod
    def from_clip(cls, clip_name_or_path: str | os.PathLike, **config_overrides) -> CLOCModel:
        """Start CLOC from an HF ``CLIPModel`` checkpoint (hub id or directory): towers, projections and
        temperature are copied; the Prompter and region heads start fresh."""
        clip = CLIPModel.from_pretrained(clip_name_or_path)
        config = CLOCConfig(
            vision_config=clip.config.vision_config.to_dict(),
            text_config=clip.config.text_config.to_dict(),
            prompter_config={
                "hidden_size": clip.config.vision_config.hidden_size,
                "intermediate_size": clip.config.vision_config.intermediate_size,
                **config_overrides.pop("prompter_config", {}),
            },
            projection_dim=clip.config.projection_dim,
            logit_scale_init_value=float(clip.logit_scale.detach()),
            **config_overrides,
        )
        model = cls(config)
        missing, unexpected = model.load_state_dict(clip.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"{clip_name_or_path}: CLIP weights with no place in CLOC: {unexpected[:5]}")
        clip_keys = {
            k
            for k in missing
            if k.startswith(("vision_model.", "text_model.", "visual_projection", "text_projection"))
        }
        if clip_keys:
            raise ValueError(f"{clip_name_or_path}: CLIP checkpoint lacks {sorted(clip_keys)[:5]}")
        return model


def distinct_phrases(
    input_ids: Tensor, attention_mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(R, L) token rows -> the distinct rows (U, L') and mask (U, L'), and (R,) the row each came from.

    Trailing columns no row attends to are dropped first: the CLIP text tower is causal and pools at
    each row's EOS, so positions after a row's last attended token never reach its embedding (given
    the EOS is among them, as a tokenizer writes it). Rows are equal only when ids and mask both are,
    so every row's embedding is exactly the one it would get.
    """
    if attention_mask is None:
        unique, inverse = torch.unique(input_ids, dim=0, return_inverse=True)  # (U, L), (R,)
        return unique, None, inverse
    attended = attention_mask.any(0).nonzero()  # columns some row attends to
    length = int(attended[-1]) + 1 if len(attended) else input_ids.shape[1]
    input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
    rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=-1)  # (R, 2L')
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)  # (U, 2L'), (R,)
    return unique[:, :length], unique[:, length:].to(attention_mask.dtype), inverse


def split_by_length(attention_mask: Tensor) -> tuple[Tensor, int]:
    """(U, L) attention mask -> (U,) which rows go in the short group, and the short group's width.

    A row's length is its last attended position + 1 (what ``distinct_phrases`` trims to). The cut is
    the length at which encoding the rows up to it at that width and the rest at the full width costs
    the fewest token positions; the full width itself (every row short) means one call.
    """
    lengths = attention_mask.shape[1] - attention_mask.flip(-1).argmax(-1)  # (U,) last attended + 1
    candidates = lengths.unique()  # (K,) ascending
    fitting = (lengths[None] <= candidates[:, None]).sum(-1)  # (K,) rows each cut would take
    cost = fitting * candidates + (len(lengths) - fitting) * attention_mask.shape[1]
    cut = int(candidates[cost.argmin()])
    return lengths <= cut, cut


def default_image_processor(config: CLOCConfig) -> CLIPImageProcessorPil:
    """CLIP's normalisation at the tower's resolution, resized without cropping (boxes stay inside).

    The PIL backend: it needs no torchvision and saves as a plain ``CLIPImageProcessor`` config.
    """
    size = config.vision_config.image_size
    return CLIPImageProcessorPil(
        size={"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=False,
    )
