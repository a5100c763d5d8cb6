"""Vision -> language projectors by LLaVA's names: ``linear``, ``mlp2x_gelu``, ``mlp3x_gelu``, ...

transformers' ``LlavaMultiModalProjector`` is linear-act-linear. ``mlp2x_gelu`` is exactly that with GELU,
and ``linear`` is that with the identity activation and the second layer pinned to the identity (frozen),
so both stay plain Llava checkpoints. Deeper MLPs need ``MLPProjector`` and the ``cloc_llava`` model type,
and so do ``PatchPositionProjector`` (any projector plus each patch's row and column),
``ColumnMajorCopy`` (the patch tokens again, column by column) and ``PatchPointer`` (the weights that
let a pointing answer's cells match and carry the image's own patch tokens).
"""

from __future__ import annotations

import re

import torch
from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")
PATCH_ORDERS = ("row", "row_column")  # raster order only | raster, then the same patches column-major
# the row / column embeddings' size: unit norm | each token's own norm (a fixed share of every token)
PATCH_POSITION_SCALES = ("unit", "token")
# the row / column embeddings' start: random | the LLM's own embedding of the patch centre's hundreds digit
PATCH_POSITION_INITS = ("random", "digits")


def projector_depth(projector_type: str) -> int:
    """Number of linear layers named by ``projector_type`` (``linear`` is 1)."""
    if projector_type == "linear":
        return 1
    match = _MLP.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown mm_projector_type {projector_type!r}; expected 'linear' or 'mlp<N>x_gelu'")
    return int(match.group(1))


def is_plain_llava_projector(projector_type: str) -> bool:
    """True when transformers' own Llava projector can hold this projector exactly."""
    return projector_depth(projector_type) <= 2


def llava_projector_act(projector_type: str) -> str:
    """``projector_hidden_act`` for a plain Llava config: identity for ``linear``, GELU otherwise."""
    return "linear" if projector_depth(projector_type) == 1 else "gelu"


def pin_linear_projector(projector: nn.Module) -> None:
    """Make a Llava projector behave as one linear layer: ``linear_2`` = identity, frozen."""
    with torch.no_grad():
        projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0]))
        if projector.linear_2.bias is not None:
            projector.linear_2.bias.zero_()
    projector.linear_2.requires_grad_(False)


class MLPProjector(nn.Module):
    """``depth`` linear layers with GELU between them: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim, bias=bias)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class PatchPositionProjector(nn.Module):
    """A projector whose image tokens also say where their patch lies: learned row and column
    embeddings (grid, H) added to each projected patch token, in the tower's raster order.

    Why: a causal LLM sees the grid as one flat sequence. Rotary positions expose a token's row (a
    coarse place in the sequence) far more than its column (the position mod grid), and the patch
    tokens' own trace of the ViT's position embedding is entangled with content. Measured on the
    synthetic world (experiments/llava_prompt_order): at unit scale it speeds up reading the object's row,
    and a 4-layer SmolLM2 still does not read the column in 1200 steps; at token scale it reads both
    within 600 (hundreds-digit gains x1 +0.18, y1 +0.20 nats). A CLS token ahead of the patches
    (``cls_patch``) gets no position.

    ``scale="unit"`` adds unit-norm embeddings (LLaVA-NeXT's scale for its learned image_newline).
    Stage 1 grows the projected tokens to norm 90-170 (docs/mllm.md), so after the LLM's RMSNorm such a
    position is about 1% of a token, and Adam moves it by about the learning rate a step.
    ``scale="token"`` multiplies the embeddings by each token's RMS, so the position keeps the share of
    the token it starts with (initialised to the same norm as the content) whatever the projector's scale.
    """

    def __init__(self, projector: nn.Module, grid: int, hidden_size: int, scale: str = "unit"):
        super().__init__()
        if scale not in PATCH_POSITION_SCALES:
            raise ValueError(f"unknown patch position scale {scale!r}; expected one of {PATCH_POSITION_SCALES}")
        self.projector = projector
        self.grid = grid
        self.scale = scale
        # row + column: unit norm ("unit"), or unit RMS per element so norm = the token's ("token")
        std = hidden_size**-0.5 if scale == "unit" else 0.5**0.5
        self.row_embed = nn.Parameter(torch.randn(grid, hidden_size) * std)
        self.column_embed = nn.Parameter(torch.randn(grid, hidden_size) * std)

    @torch.no_grad()
    def start_from_digits(self, digit_embeddings: torch.Tensor) -> None:
        """Start row r (column c) at the LLM's embedding of the hundreds digit of that patch's centre on
        the 0-999 box scale, ``digit_embeddings`` (10, H) being the embeddings of "0".."9".

        Why: the answer writes that digit for an object there; a position already in the LLM's own
        vocabulary can be copied out by attention the pretrained model has, instead of a random code it
        must learn to decode (what it changes: experiments/llava_prompt_order). Each row keeps the
        random start's RMS, so the scale's argument above holds unchanged.
        """
        digits = [int((i + 0.5) * 1000 / self.grid) // 100 for i in range(self.grid)]
        start = digit_embeddings[digits].float()  # (grid, H)
        for embed in (self.row_embed, self.column_embed):
            rms = embed.pow(2).mean(-1, keepdim=True).sqrt()  # (grid, 1)
            embed.copy_(start / start.pow(2).mean(-1, keepdim=True).sqrt() * rms)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.projector(features)  # (I, N, H), N = grid * grid [+ 1 CLS first]
        patches = self.grid * self.grid
        if tokens.shape[-2] not in (patches, patches + 1):
            raise ValueError(f"{tokens.shape[-2]} image tokens, expected a {self.grid}x{self.grid} grid (+ CLS)")
        position = (self.row_embed[:, None] + self.column_embed[None]).flatten(0, 1)  # (grid * grid, H)
        if tokens.shape[-2] == patches + 1:
            position = torch.cat([position.new_zeros(1, position.shape[-1]), position])
        position = position.to(tokens.dtype)
        if self.scale == "token":
            position = position * tokens.pow(2).mean(-1, keepdim=True).sqrt()  # (I, N, H)
        return tokens + position


class ColumnMajorCopy(nn.Module):
    """A projector whose raster-order image tokens are followed by the same patch tokens column by
    column: (I, N, H) -> (I, N + grid * grid, H).

    Why: measured on the synthetic world (experiments/llava_prompt_order), a causal LLM reads the
    coordinate along which the object's tokens are contiguous in the sequence -- y in raster order,
    x once the images are transposed -- and not its place inside that stretch. With both orders in
    the sequence each coordinate is contiguous in one copy (measured there: x becomes readable, y
    less so, within 600 steps). A CLS token ahead of the patches (``cls_patch``) is not repeated.
    """

    def __init__(self, projector: nn.Module, grid: int):
        super().__init__()
        self.projector = projector
        self.grid = grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.projector(features)  # (I, N, H), N = grid * grid [+ 1 CLS first]
        patches = self.grid * self.grid
        if tokens.shape[-2] not in (patches, patches + 1):
            raise ValueError(f"{tokens.shape[-2]} image tokens, expected a {self.grid}x{self.grid} grid (+ CLS)")
        grid = tokens[..., -patches:, :].unflatten(-2, (self.grid, self.grid))  # (I, rows, columns, H)
        return torch.cat([tokens, grid.transpose(-3, -2).flatten(-3, -2)], dim=-2)  # (I, N + grid^2, H)


def checked_patch_order(patch_order: str) -> str:
    """``patch_order`` itself, or a clear error when it is none of ``PATCH_ORDERS``."""
    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch order must be one of {PATCH_ORDERS}, got {patch_order!r}")
    return patch_order


def extra_image_tokens(patch_order: str, grid: int) -> int:
    """Image tokens a ``patch_order`` adds to the tower's own (the column-major copy's)."""
    return grid * grid if checked_patch_order(patch_order) == "row_column" else 0


class PatchPointer(nn.Module):
    """A projector plus the two weights of patch pointing: the answer's ``<cell_k>`` logit also matches
    the answer state against the k-th projected patch token of the record's image, and a written
    ``<cell_k>`` carries that token's features.

    Why: with cells as ordinary vocabulary the LLM must learn, through its LM head, which of 64 fixed
    rows goes with the place of "the red circle"; a localized tower's patch tokens already say what lies
    where, so naming a cell can be a match of the question's state against them -- the text-to-patch
    match CLOC's losses train. Both weights start at zero, so a new pointer starts as the vocabulary
    pointer (``mllm.pointing``) exactly. They live in the projector so that they train, are saved and
    are loaded with it in both stages (and under LoRA) without further plumbing.

    Keys are the patch tokens at unit RMS: stage 1 grows the projected tokens to norm 90-170
    (docs/mllm.md), and the match should not grow with them.
    """

    def __init__(self, projector: nn.Module, hidden_size: int):
        super().__init__()
        self.projector = projector
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.query.weight)
        self.carry = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    @staticmethod
    def keys(patch_tokens: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens (..., N, H) at unit RMS."""
        return patch_tokens * torch.rsqrt(patch_tokens.pow(2).mean(-1, keepdim=True) + 1e-6)

    def scores(self, hidden: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """What each patch adds to its cell's logit: hidden (..., n, H), patch_tokens (..., N, H) -> (..., n, N)."""
        return torch.einsum("...nh,...kh->...nk", self.query(hidden), self.keys(patch_tokens).to(hidden.dtype))

    def carried(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """What a written cell adds to its embedding: the pointed patch token (..., H), scaled by ``carry``."""
        return self.carry.to(patch_tokens.dtype) * self.keys(patch_tokens)
