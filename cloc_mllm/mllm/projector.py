"""Vision -> language projectors by LLaVA's names: ``linear``, ``mlp2x_gelu``, ``mlp3x_gelu``, ...

transformers' ``LlavaMultiModalProjector`` is linear-act-linear. ``mlp2x_gelu`` is exactly that with GELU,
and ``linear`` is that with the identity activation and the second layer pinned to the identity (frozen),
so both stay plain Llava checkpoints. Deeper MLPs need ``MLPProjector`` and the ``cloc_llava`` model type.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


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
