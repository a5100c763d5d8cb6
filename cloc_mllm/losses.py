"""CLOC's training losses, each owning its gathering of features across ranks.

``L = L_clip + λ (L_region + L_ground)`` with λ = weight × (images carrying region text) / batch size.
Every loss is written so that, averaged over ranks, it equals the single-process loss on the global
batch, and its gradients (after DDP's averaging) equal the single-process gradients: features are
gathered *with* gradients and each rank scores its own rows against all columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_xyxy_to_cxcywh, elementwise_generalized_box_iou
from .prompter import box_patch_coverage


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping the autograd graph (identity on 1 rank)."""
    if _world()[1] == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather_no_grad(tensor: Tensor) -> Tensor:
    if _world()[1] == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(_world()[1])]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def _local_rows(num_local: int, num_total_before: int) -> Tensor:
    return torch.arange(num_local) + num_total_before


@dataclass(frozen=True)
class StepCounts:
    """Every rank's row counts of one step: images, valid regions (or phrases) and images that carry
    a region. Gathered once per step (one all_gather of three integers) and read by every term, for
    the rows before this rank, the global totals and the ragged gathers."""

    rank: int
    images: tuple[int, ...]
    regions: tuple[int, ...]
    with_regions: tuple[int, ...]

    @classmethod
    def gather(cls, images: int, regions: int = 0, with_regions: int = 0, device: torch.device | None = None) -> StepCounts:
        rank, world = _world()
        local = torch.tensor([[images, regions, int(with_regions)]], device=device)  # (1, 3)
        table = gather_no_grad(local) if world > 1 else local  # (world, 3)
        return cls(rank, *(tuple(column) for column in table.t().tolist()))

    def before(self, kind: str) -> int:
        """Rows of ``kind`` on the ranks before this one (the offset of this rank's rows)."""
        return sum(getattr(self, kind)[: self.rank])

    def total(self, kind: str) -> int:
        return sum(getattr(self, kind))


def infonce_loss(
    local_a: Tensor,
    local_b: Tensor,
    all_a: Tensor,
    all_b: Tensor,
    logit_scale: Tensor,
    offset: int,
    ignore: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE of this rank's rows against all columns; mean over the global rows.

    local_a/b: (n, D) normalised pairs; all_a/b: (N, D) every rank's rows; ``ignore`` (n, N) bool removes
    negatives (never the positive) from the denominators. Returns this rank's share: the sum over its
    rows divided by N, so summing over ranks gives the global mean.
    """
    scale = logit_scale.exp()
    logits_ab = scale * local_a @ all_b.t()  # (n, N)
    logits_ba = scale * local_b @ all_a.t()
    if ignore is not None:
        logits_ab = logits_ab.masked_fill(ignore, float("-inf"))
        logits_ba = logits_ba.masked_fill(ignore, float("-inf"))
    targets = _local_rows(local_a.shape[0], offset).to(local_a.device)
    total = all_a.shape[0]
    loss = F.cross_entropy(logits_ab, targets, reduction="sum") + F.cross_entropy(
        logits_ba, targets, reduction="sum"
    )
    return loss / (2 * total)


def siglip_loss(
    local_image: Tensor, all_text: Tensor, logit_scale: Tensor, logit_bias: Tensor, offset: int
) -> Tensor:
    """Sigmoid pairwise loss (SigLIP), this rank's image rows against every text; global-row mean share."""
    logits = logit_scale.exp() * local_image @ all_text.t() + logit_bias  # (n, N)
    labels = -torch.ones_like(logits)
    rows = torch.arange(local_image.shape[0], device=logits.device)
    labels[rows, rows + offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / all_text.shape[0]


def grounding_map_loss(logits: Tensor, coverage: Tensor) -> Tensor:
    """Per-text loss (R,): cross-entropy between the softmax of the grounding logits over the patches
    (R, N) and the target box's patch coverage (R, N), normalised to a distribution. It teaches the
    text-to-patch similarity map to light up the named object and nothing else."""
    target = coverage / coverage.sum(-1, keepdim=True).clamp(min=1e-6)
    return -(target * logits.log_softmax(-1)).sum(-1)


def grounding_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-box loss (R,) between (R, 4) normalised xyxy boxes: ``l2`` | ``l1`` | ``giou`` (GIoU + L1)."""
    if kind == "l2":
        return (box_xyxy_to_cxcywh(pred) - box_xyxy_to_cxcywh(target)).pow(2).sum(-1)
    l1 = (pred - target).abs().sum(-1)
    if kind == "l1":
        return l1
    return l1 + (1.0 - elementwise_generalized_box_iou(pred, target))


@dataclass
class LossTerms:
    loss: Tensor
    loss_clip: Tensor
    loss_region: Tensor | None = None
    loss_ground: Tensor | None = None
    region_weight: Tensor | None = None  # λ actually applied


class CLOCLoss(nn.Module):
    """Turns the model's embeddings and box predictions into ``L_clip + λ (L_region + L_ground)``.

    Each rank returns its share: summed over ranks it is the loss of the global batch, which DDP's
    gradient averaging (divide by world size) turns back into the right gradient because each share
    is multiplied by the world size here. On one process the factor is 1.
    """

    def __init__(
        self,
        contrastive: str = "infonce",
        grounding: str = "giou",  # CLOCConfig.grounding_loss's default
        region_weight: float = 1.0,
        grounding_weight: float = 1.0,
        text_similarity_threshold: float = 0.9,
        grid_size: int = 14,
    ):
        super().__init__()
        self.grid_size = grid_size  # patches per image side: the grounding map's target grid
        self.contrastive = contrastive
        self.grounding = grounding
        self.region_weight = region_weight
        self.grounding_weight = grounding_weight
        self.text_similarity_threshold = text_similarity_threshold

    def clip_term(
        self,
        image_embeds: Tensor,
        text_embeds: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None,
        counts: StepCounts | None = None,
    ) -> Tensor:
        counts = counts or StepCounts.gather(image_embeds.shape[0], device=image_embeds.device)
        offset = counts.before("images")
        all_text = gather_with_grad(text_embeds)
        if self.contrastive == "siglip":
            return siglip_loss(image_embeds, all_text, logit_scale, logit_bias, offset)
        all_image = gather_with_grad(image_embeds)
        return infonce_loss(image_embeds, text_embeds, all_image, all_text, logit_scale, offset)

    def region_term(
        self,
        region_embeds: Tensor,
        region_text_embeds: Tensor,
        logit_scale: Tensor,
        text_signatures: Tensor | None = None,
        counts: StepCounts | None = None,
    ) -> Tensor:
        """(R, D) valid regions of this rank vs all ranks' regions, with near-duplicate captions ignored.

        Caption similarity is measured on ``text_signatures`` (R, S) L2-normalised when given, else on
        the text embeddings themselves (the paper's rule).
        """
        counts = counts or StepCounts.gather(0, region_embeds.shape[0], device=region_embeds.device)
        offset = counts.before("regions")
        all_regions = _gather_ragged(region_embeds, counts.regions)
        all_texts = _gather_ragged(region_text_embeds, counts.regions)
        with torch.no_grad():
            signatures = region_text_embeds if text_signatures is None else text_signatures
            text_similarity = signatures @ _gather_ragged(signatures, counts.regions).t()  # (r, R)
            ignore = text_similarity > self.text_similarity_threshold
            rows = torch.arange(region_embeds.shape[0], device=ignore.device)
            ignore[rows, rows + offset] = False  # the positive always stays
        return infonce_loss(
            region_embeds, region_text_embeds, all_regions, all_texts, logit_scale, offset, ignore
        )

    def phrase_image_term(
        self,
        phrase_embeds: Tensor,
        phrase_images: Tensor,
        image_embeds: Tensor,
        logit_scale: Tensor,
        phrase_signatures: Tensor,
        counts: StepCounts | None = None,
    ) -> Tensor:
        """The equal-supervision control: each region phrase (r, D) of this rank as an extra text of
        its whole image, scored against every rank's images (text -> image InfoNCE).

        ``phrase_images`` (r,) local image row of each phrase. An image that also carries the phrase
        (signature similarity above the threshold) is not a negative: "red circle" names many images.
        """
        counts = counts or StepCounts.gather(image_embeds.shape[0], phrase_embeds.shape[0], device=image_embeds.device)
        num_phrases = counts.total("regions")
        all_images = gather_with_grad(image_embeds)  # (N, D)
        own = phrase_images + counts.before("images")  # (r,) global image rows
        with torch.no_grad():
            all_signatures = _gather_ragged(phrase_signatures, counts.regions)
            same = phrase_signatures @ all_signatures.t() > self.text_similarity_threshold  # (r, R)
            owners = _gather_ragged(own, counts.regions)[None].expand_as(same)  # (r, R) the image of every phrase
            ignore = torch.zeros(same.shape[0], all_images.shape[0], device=same.device)
            ignore = ignore.scatter_reduce(1, owners, same.float(), "amax").bool()  # (r, N)
            ignore[torch.arange(own.shape[0], device=own.device), own] = False  # the positive stays
        logits = (logit_scale.exp() * phrase_embeds @ all_images.t()).masked_fill(ignore, float("-inf"))
        return F.cross_entropy(logits, own, reduction="sum") / max(num_phrases, 1)

    def forward(
        self,
        image_embeds: Tensor,
        text_embeds: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        region_embeds: Tensor | None = None,
        region_text_embeds: Tensor | None = None,
        pred_boxes: Tensor | None = None,
        region_boxes: Tensor | None = None,
        region_mask: Tensor | None = None,
        region_logit_scale: Tensor | None = None,
        region_text_signatures: Tensor | None = None,
        grounding_logits: Tensor | None = None,
        phrase_images: Tensor | None = None,
    ) -> LossTerms:
        """The model's outputs: image/text_embeds (B, D) normalised, region tensors over the valid
        regions (R, D) / (R, 4), ``grounding_logits`` (R, N); ``phrase_images`` (R,) in the
        equal-supervision control (no region embeddings): the local image row of each of the
        ``region_text_embeds``, scored as extra image-text pairs. The batch: ``region_boxes`` (B, M, 4)
        normalised xyxy and ``region_mask`` (B, M). The targets (the valid boxes, their patch coverage,
        the images that carry a region) are built here from the batch."""
        _, world = _world()
        uses_regions = region_embeds is not None or phrase_images is not None
        rows = region_embeds if region_embeds is not None else region_text_embeds
        counts = StepCounts.gather(  # the step's only count exchange
            image_embeds.shape[0],
            rows.shape[0] if uses_regions else 0,
            int(region_mask.any(-1).sum()) if uses_regions else 0,
            image_embeds.device,
        )
        loss_clip = self.clip_term(image_embeds, text_embeds, logit_scale, logit_bias, counts) * world
        if not uses_regions:
            return LossTerms(loss=loss_clip, loss_clip=loss_clip)
        with_regions = counts.total("with_regions")
        lam = image_embeds.new_tensor(self.region_weight * with_regions / counts.total("images"))
        if phrase_images is not None:
            if with_regions == 0:
                zero = region_text_embeds.sum() * 0.0
                return LossTerms(loss_clip + zero, loss_clip, zero, None, lam)
            loss_phrase = self.phrase_image_term(
                region_text_embeds, phrase_images, image_embeds, logit_scale, region_text_signatures, counts
            ) * world  # fmt: skip
            return LossTerms(loss_clip + lam * loss_phrase, loss_clip, loss_phrase, None, lam)
        if with_regions == 0:
            # Keep the region parameters in the graph (zero gradient) so DDP sees every parameter used.
            zero = region_embeds.sum() * 0.0 + (pred_boxes.sum() * 0.0 if pred_boxes is not None else 0.0)
            return LossTerms(loss_clip + zero, loss_clip, zero, zero, lam)
        scale = region_logit_scale if region_logit_scale is not None else logit_scale
        loss_region = self.region_term(region_embeds, region_text_embeds, scale, region_text_signatures, counts) * world
        loss_ground = image_embeds.new_zeros(())
        if pred_boxes is not None:
            num_regions = max(counts.total("regions"), 1)
            target_boxes = region_boxes[region_mask].float()  # (R, 4)
            per_box = grounding_loss(pred_boxes.float(), target_boxes, self.grounding)
            if grounding_logits is not None:
                coverage = box_patch_coverage(target_boxes[None], self.grid_size)[0]  # (R, N)
                per_box = per_box + grounding_map_loss(grounding_logits.float(), coverage)
            loss_ground = per_box.sum() / num_regions * world * self.grounding_weight
        loss = loss_clip + lam * (loss_region + loss_ground)
        return LossTerms(loss, loss_clip, loss_region, loss_ground, lam)


def token_signatures(input_ids: Tensor, attention_mask: Tensor | None, special_ids: Tensor, buckets: int = 1024) -> Tensor:
    """A model-free caption fingerprint: L2-normalised hashed bag of token ids, (R, L) -> (R, buckets).

    Identical captions get similarity 1 and captions sharing few tokens little, from the first step;
    the text tower's own embeddings, by contrast, start out nearly identical for every caption, so a
    0.9 threshold on them would drop every negative of an untrained model.
    """
    keep = ~torch.isin(input_ids, special_ids)
    if attention_mask is not None:
        keep &= attention_mask.bool()
    counts = torch.zeros(input_ids.shape[0], buckets, device=input_ids.device)
    counts.scatter_add_(1, input_ids % buckets, keep.float())
    return F.normalize(counts, dim=-1)


def _gather_ragged(tensor: Tensor, counts: tuple[int, ...]) -> Tensor:
    """all_gather (with gradients when ``tensor`` needs them) for per-rank row counts ``counts`` that
    differ (pads, gathers, strips)."""
    _, world = _world()
    if world == 1:
        return tensor
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(counts) - tensor.shape[0]))  # rows only
    parts = dist_fn.all_gather(padded) if tensor.requires_grad else gather_no_grad(padded).chunk(world)
    return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0)
