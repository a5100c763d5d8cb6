"""Promptable embeddings: box / text prompts over ViT tokens -> region embedding or box.

Follows CLOC (Sec. 3.3, App. B.1) with SAM's prompt-encoder recipe: a box is two corner tokens, each a
parameter-free Fourier encoding of the corner plus a learned corner-type embedding; a text prompt is one
token projected from the text embedding. One transformer layer lets the prompt tokens read the image
tokens (which carry the same Fourier encoding of their patch centre, so "near this corner" is a dot
product). The pooled prompt outputs become the region embedding; the grounding head regresses a box
from a text prompt's output. ``RoIAlignRegionHead`` is the paper's ablation baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, roi_align, tokens_to_feature_map
from .configuration_cloc import PrompterConfig

NUM_BOX_PROMPT_TOKENS = 2  # top-left and bottom-right corners


class FourierPositionEncoding(nn.Module):
    """(..., 2) points in [0, 1] -> (..., dim) sin/cos features at geometric frequencies.

    The highest frequency sets the resolution: with ``max_frequency`` cycles per image, points one patch
    apart get clearly different codes, which the Prompter needs to tell neighbouring patches apart.
    """

    def __init__(self, dim: int, max_frequency: float):
        super().__init__()
        if dim % 4:
            raise ValueError(f"Fourier encoding width must be divisible by 4, got {dim}")
        self.dim, self.max_frequency = dim, max_frequency
        self.register_buffer("frequencies", self.initial_frequencies(), persistent=False)

    def initial_frequencies(self) -> Tensor:
        """(dim/4,) angular frequencies, 1 to ``max_frequency`` cycles per image, geometrically spaced."""
        return torch.logspace(0, math.log10(max(self.max_frequency, 1.0)), self.dim // 4) * 2 * math.pi

    def forward(self, points: Tensor) -> Tensor:
        angles = points.to(self.frequencies.dtype)[..., None] * self.frequencies  # (..., 2, dim/4)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2, dim/2)
        return features.flatten(-2)


def patch_centres(grid_size: int) -> Tensor:
    """(N, 2) normalised (x, y) centres of a grid_size x grid_size patch grid, row-major like ViT tokens."""
    coords = (torch.arange(grid_size, dtype=torch.float32) + 0.5) / grid_size
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def patch_cell_boxes(grid_size: int) -> Tensor:
    """(N, 4) normalised xyxy of every cell of a grid_size x grid_size patch grid, row-major."""
    corners = patch_centres(grid_size) - 0.5 / grid_size
    return torch.cat([corners, corners + 1.0 / grid_size], dim=-1)


def patch_cell_index(grid_size: int, cell_size: int) -> Tensor:
    """(N,) index of the cell holding each patch of a grid_size x grid_size grid, for cells of
    cell_size x cell_size patches; both row-major, so cell_size=1 is the identity."""
    cell = torch.arange(grid_size) // cell_size  # (G,) the cell row (or column) of each patch row (column)
    return (cell[:, None] * (grid_size // cell_size) + cell[None, :]).flatten()


def box_patch_coverage(boxes: Tensor, grid_size: int) -> Tensor:
    """Fraction of each patch cell a box covers, rescaled so the best-covered cell is 1.

    boxes: (B, K, 4) normalised xyxy -> (B, K, N) in [0, 1]. Rescaling keeps boxes smaller than a
    patch meaningful: their best cell still gets full weight.
    """
    edges = torch.arange(grid_size + 1, device=boxes.device, dtype=boxes.dtype) / grid_size
    lo, hi = edges[:-1], edges[1:]  # (G,)

    def overlap(a: Tensor, b: Tensor) -> Tensor:  # (B, K) -> (B, K, G)
        return (torch.minimum(b[..., None], hi) - torch.maximum(a[..., None], lo)).clamp(min=0) * grid_size

    ox = overlap(boxes[..., 0], boxes[..., 2])
    oy = overlap(boxes[..., 1], boxes[..., 3])
    coverage = (oy[..., :, None] * ox[..., None, :]).flatten(-2)  # (B, K, G*G), row-major
    return coverage / coverage.amax(-1, keepdim=True).clamp(min=1e-6)


NUM_GEOMETRY_FEATURES = 4
UNIFORM_STD_TO_WIDTH = math.sqrt(12.0)  # a uniform blob of width w has standard deviation w / sqrt(12)


def attention_box_estimate(attention: Tensor, centres: Tensor) -> Tensor:
    """Attention over patches (B, K, N) and patch centres (N, 2) -> (B, K, 4) cxcywh in [0, 1].

    Centre = attention-weighted mean position; size = sqrt(12) x weighted standard deviation, exact
    when the attention spreads evenly over an axis-aligned box.
    """
    mean = attention @ centres  # (B, K, 2)
    var = attention @ centres.pow(2) - mean.pow(2)
    size = UNIFORM_STD_TO_WIDTH * var.clamp(min=1e-6).sqrt()
    return torch.cat([mean, size], dim=-1).clamp(0.0, 1.0)


class PromptEncoder(nn.Module):
    """Turns boxes and text embeddings into prompt tokens, and gives image tokens their positions."""

    def __init__(self, config: PrompterConfig, grid_size: int, text_dim: int):
        super().__init__()
        width, self.grid_size = config.hidden_size, grid_size
        max_frequency = config.pe_max_frequency or 2.0 * grid_size
        self.position_encoding = FourierPositionEncoding(width, max_frequency)
        self.corner_embeddings = nn.Embedding(NUM_BOX_PROMPT_TOKENS, width)
        self.text_embedding = nn.Linear(text_dim, width)
        self.text_type_embedding = nn.Parameter(torch.zeros(width))
        self.register_buffer("centres", patch_centres(grid_size), persistent=False)

    def box_tokens(self, boxes: Tensor) -> Tensor:
        """(B, K, 4) normalised xyxy -> (B, K, 2, C)."""
        corners = boxes.reshape(*boxes.shape[:-1], NUM_BOX_PROMPT_TOKENS, 2)
        return self.position_encoding(corners) + self.corner_embeddings.weight

    def text_tokens(self, text_embeds: Tensor) -> Tensor:
        """(B, K, D) text embeddings -> (B, K, 1, C)."""
        return (self.text_embedding(text_embeds) + self.text_type_embedding)[..., None, :]

    def image_positions(self) -> Tensor:
        """(N, C) encodings of the patch centres, in the same code as the box corners."""
        return self.position_encoding(self.centres)


class PrompterLayer(nn.Module):
    """One pre-norm transformer layer in which prompt tokens attend to [own prompts; image tokens].

    ``forward`` computes only the prompt rows, sharing the image keys/values across all K prompts of
    an image: O(K·P·(P+N)). ``forward_full`` is the paper's layer run per region over the whole
    [prompt; image] sequence, kept for ablation and benchmarks.
    """

    def __init__(self, config: PrompterConfig):
        super().__init__()
        width, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(width, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, width)
        )
        self.pe_add_to_values = config.pe_add_to_values

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def _image_keys_values(self, image_tokens: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.norm1(image_tokens)
        keys = self._heads(self.k_proj(normed + image_pe))  # (B, N, H, d)
        values = self._heads(self.v_proj(normed + image_pe if self.pe_add_to_values else normed))
        return keys, values

    def _feed_forward(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + self.out_proj(attended.flatten(-2))
        return x + self.mlp(self.norm2(x))

    def forward(
        self,
        prompts: Tensor,
        image_tokens: Tensor,
        image_pe: Tensor,
        image_bias: Tensor | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """prompts (B, K, P, C), image_tokens (B, N, C), image_pe (N, C), image_bias (B, K, N) -> (B, K, P, C).

        With ``return_attention`` also the head-averaged attention of each prompt over the image tokens
        (B, K, P, N), which the grounding head turns into a position estimate.
        """
        normed = self.norm1(prompts)
        q = self._heads(self.q_proj(normed)) / math.sqrt(self.head_dim)  # (B, K, P, H, d)
        kp, vp = self._heads(self.k_proj(normed)), self._heads(self.v_proj(normed))
        ki, vi = self._image_keys_values(image_tokens, image_pe)
        logits_prompt = torch.einsum("bkphd,bkqhd->bkhpq", q, kp)  # (B, K, H, P, P)
        logits_image = torch.einsum("bkphd,bnhd->bkhpn", q, ki)  # (B, K, H, P, N)
        if image_bias is not None:
            logits_image = logits_image + image_bias[:, :, None, None, :]
        weights = torch.cat([logits_prompt, logits_image], dim=-1).softmax(-1)
        num_prompts = prompts.shape[2]
        attended = torch.einsum("bkhpq,bkqhd->bkphd", weights[..., :num_prompts], vp) + torch.einsum(
            "bkhpn,bnhd->bkphd", weights[..., num_prompts:], vi
        )
        out = self._feed_forward(prompts, attended)
        if return_attention:
            return out, weights[..., num_prompts:].mean(2)
        return out

    def forward_full(
        self, prompts: Tensor, image_tokens: Tensor, image_pe: Tensor, image_bias: Tensor | None = None
    ) -> Tensor:
        """The paper's literal layer: per region, self-attention over [P prompts; N image tokens].

        prompts (B, K, P, C), image_tokens (B, N, C) -> (B, K, P + N, C).
        """
        b, k, p, c = prompts.shape
        n = image_tokens.shape[1]
        tokens = torch.cat([prompts, image_tokens[:, None].expand(b, k, n, c)], dim=2)  # (B, K, P+N, C)
        pe = torch.cat([prompts.new_zeros(p, c), image_pe], dim=0)  # image rows carry their position
        normed = self.norm1(tokens)
        q = self.q_proj(normed + pe)
        keys = self.k_proj(normed + pe)
        values = self.v_proj(normed + pe if self.pe_add_to_values else normed)
        mask = None
        if image_bias is not None:  # bias only the prompt queries' view of the image, as in forward()
            mask = tokens.new_zeros(b, k, p + n, p + n)
            mask[:, :, :p, p:] = image_bias[:, :, None, :]
            mask = mask.flatten(0, 1)[:, None]
        split = [
            t.flatten(0, 1).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
            for t in (q, keys, values)
        ]
        attended = F.scaled_dot_product_attention(*split, attn_mask=mask)  # (B*K, H, P+N, d)
        attended = attended.transpose(1, 2).unflatten(0, (b, k))  # (B, K, P+N, H, d)
        return self._feed_forward(tokens, attended)


class Prompter(nn.Module):
    """Box -> region embedding and text -> box over one image's tokens (CLOC's promptable embeddings)."""

    def __init__(self, config: PrompterConfig, grid_size: int, projection_dim: int):
        super().__init__()
        self.config = config
        self.grid_size = grid_size
        width = config.hidden_size
        self.prompt_encoder = PromptEncoder(config, grid_size, projection_dim)
        self.layer = PrompterLayer(config)
        self.box_bias_scale = (
            nn.Parameter(torch.tensor(float(config.box_bias_init)))
            if config.box_attention_bias == "coverage"
            else None
        )
        self.grounding_bias_scale = (
            nn.Parameter(torch.tensor(float(config.grounding_bias_init)))
            if config.grounding_attention_bias == "similarity"
            else None
        )
        self.content_type_embedding = nn.Parameter(torch.zeros(width)) if config.box_content_token else None
        # the similarity bias's cells (Nc = (grid / cell size)^2 boxes) and the cell each patch reads
        self.cell_size = config.grounding_cell_size
        self.register_buffer("cell_boxes", patch_cell_boxes(grid_size // self.cell_size), persistent=False)
        self.register_buffer("cell_of_patch", patch_cell_index(grid_size, self.cell_size), persistent=False)
        self.region_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.region_projection = nn.Linear(width, projection_dim, bias=False)
        hidden = config.grounding_hidden_size or width
        self.grounding_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.grounding_head = nn.Sequential(
            nn.Linear(width + NUM_GEOMETRY_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 4)
        )

    def _box_bias(self, coverage: Tensor) -> Tensor | None:
        """(B, K, N) patch coverage of the boxes -> attention bias: 0 inside, negative outside."""
        if self.box_bias_scale is None:
            return None
        return self.box_bias_scale.abs() * (coverage - 1.0)

    def _content_token(self, image_tokens: Tensor, coverage: Tensor) -> Tensor:
        """(B, K, 1, C): the coverage-weighted mean of the image tokens under each box, typed.

        Corner queries locate the box; this token starts from what is inside it, so the region
        embedding integrates the whole object instead of the patches nearest the corners.
        """
        # a box that covers no patch (zero area, or a padded NO_BOX row clamped to a point) gets the
        # type embedding alone: 0/0 here would put NaN into every gradient that passes these rows
        weights = coverage / coverage.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, K, N)
        return (weights @ image_tokens + self.content_type_embedding)[:, :, None]

    def encode_boxes(self, image_tokens: Tensor, boxes: Tensor) -> Tensor:
        """image_tokens (B, N, C) patch tokens, boxes (B, K, 4) normalised xyxy -> (B, K, D), not normalised."""
        prompts = self.prompt_encoder.box_tokens(boxes.to(image_tokens.dtype))  # (B, K, 2, C)
        coverage = box_patch_coverage(boxes.float(), self.grid_size).to(image_tokens.dtype)  # (B, K, N)
        if self.content_type_embedding is not None:
            prompts = torch.cat([prompts, self._content_token(image_tokens, coverage)], dim=2)  # (B, K, 3, C)
        image_pe = self.prompt_encoder.image_positions().to(image_tokens.dtype)
        bias = self._box_bias(coverage)
        if self.config.attention == "full":
            pooled = self.layer.forward_full(prompts, image_tokens, image_pe, bias).mean(2)
        else:
            pooled = self.layer(prompts, image_tokens, image_pe, bias).mean(2)  # (B, K, C)
        return self.region_projection(self.region_norm(pooled))

    def _text_similarity_bias(self, image_tokens: Tensor, text_embeds: Tensor) -> Tensor | None:
        """(B, K, N): scaled cosine between each text and the region embedding of every patch's cell.

        The region loss teaches box -> embedding; reading it back per cell turns a phrase into a
        similarity map over the image, which steers the grounding attention onto the named object.
        Encoding the cells is most of CLOC's extra training cost (docs/pretraining.md); cells of
        ``grounding_cell_size`` patches a side cut it by that size squared.
        """
        if self.grounding_bias_scale is None:
            return None
        cells = self.cell_boxes.to(image_tokens.dtype).expand(image_tokens.shape[0], -1, -1)  # (B, Nc, 4)
        cell_embeds = F.normalize(self.encode_boxes(image_tokens, cells), dim=-1)  # (B, Nc, D)
        similarity = torch.einsum("bkd,bnd->bkn", F.normalize(text_embeds, dim=-1), cell_embeds)  # (B, K, Nc)
        return self.grounding_bias_scale.abs() * similarity[..., self.cell_of_patch]  # (B, K, N)

    def ground(
        self, image_tokens: Tensor, text_embeds: Tensor, return_logits: bool = False
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """image_tokens (B, N, C), text_embeds (B, K, D) -> boxes (B, K, 4) normalised xyxy.

        With ``return_logits`` also the similarity bias (B, K, N) (None without one), which training
        supervises with the target box's patch coverage.

        The text token's attention over the patches (steered by the text's similarity to each cell's
        region embedding) is a soft mask of where the phrase is; its centroid and spread give a box
        estimate, and the 2-layer GELU MLP reads the Prompter's output together with that estimate and
        corrects it (in logit space, so it starts from the estimate). The prompt rows are the same in
        both attention variants, so grounding always uses the cheap one.
        """
        text_embeds = text_embeds.to(image_tokens.dtype)
        prompts = self.prompt_encoder.text_tokens(text_embeds)  # (B, K, 1, C)
        image_pe = self.prompt_encoder.image_positions().to(image_tokens.dtype)
        bias = self._text_similarity_bias(image_tokens, text_embeds)
        out, attention = self.layer(prompts, image_tokens, image_pe, bias, return_attention=True)
        estimate = attention_box_estimate(attention[:, :, 0], self.prompt_encoder.centres.to(attention.dtype))
        features = torch.cat([self.grounding_norm(out[:, :, 0]), estimate], dim=-1)  # (B, K, C + 4)
        prior = torch.logit(estimate.clamp(0.05, 0.95))  # bounded, so the sigmoid never saturates
        cxcywh = (prior + self.grounding_head(features)).sigmoid()  # (B, K, 4)
        boxes = box_cxcywh_to_xyxy(cxcywh).clamp(0.0, 1.0)
        return (boxes, bias) if return_logits else boxes


@torch.no_grad()
def init_prompter_state(module: nn.Module) -> None:
    """``_init_weights`` for the Prompter's own tensors, shared by every model that holds a Prompter:
    its scalar scales and type embedding (transformers' ``init`` leaves loaded ones alone) and its
    geometry buffers (``restore_geometry``)."""
    from transformers import initialization as init

    if isinstance(module, Prompter):
        if module.box_bias_scale is not None:
            init.constant_(module.box_bias_scale, module.config.box_bias_init)
        if module.grounding_bias_scale is not None:
            init.constant_(module.grounding_bias_scale, module.config.grounding_bias_init)
        if module.content_type_embedding is not None:
            init.zeros_(module.content_type_embedding)
    elif isinstance(module, PromptEncoder):
        init.zeros_(module.text_type_embedding)
    restore_geometry(module)


@torch.no_grad()
def restore_geometry(module: nn.Module) -> None:
    """Recompute ``module``'s unsaved buffers (patch centres, cells, Fourier frequencies).

    They follow from the grid, so checkpoints do not hold them; ``from_pretrained`` builds the model on
    the meta device and leaves such a buffer as uninitialised memory until this runs, and a Prompter
    reading garbage centres answers garbage.
    """
    if isinstance(module, Prompter):
        module.cell_boxes.copy_(patch_cell_boxes(module.grid_size // module.cell_size))
        module.cell_of_patch.copy_(patch_cell_index(module.grid_size, module.cell_size))
    elif isinstance(module, PromptEncoder):
        module.centres.copy_(patch_centres(module.grid_size))
    elif isinstance(module, FourierPositionEncoding):
        module.frequencies.copy_(module.initial_frequencies())


class RoIAlignRegionHead(nn.Module):
    """The ablation baseline: RoIAlign over the patch-token map, averaged, normed and projected."""

    def __init__(self, width: int, projection_dim: int, output_size: int, eps: float = 1e-5):
        super().__init__()
        self.output_size = output_size
        self.norm = nn.LayerNorm(width, eps=eps)
        self.projection = nn.Linear(width, projection_dim, bias=False)

    def forward(self, image_tokens: Tensor, boxes: Tensor) -> Tensor:
        """image_tokens (B, N, C), boxes (B, K, 4) -> (B, K, D), not normalised."""
        return self.projection(self.norm(roi_pool_tokens(image_tokens, boxes, self.output_size)))


def roi_pool_tokens(image_tokens: Tensor, boxes: Tensor, output_size: int) -> Tensor:
    """Average of RoIAlign cells over a square token grid: (B, N, C), (B, K, 4) -> (B, K, C)."""
    features = tokens_to_feature_map(image_tokens)  # (B, C, h, w)
    return roi_align(features, boxes.to(features.dtype), output_size).mean(dim=(-2, -1))
