"""Region prompts (the paper's Ferret*): a referred box becomes one ``<region>`` token for the LLM.

CLOC's Prompter turns the box into a region embedding over the tower's last-layer patch tokens (the
tokens it was pretrained on), and a small MLP maps that embedding to the LLM's width, where it replaces
the ``<region>`` placeholder's embedding. Ferret samples features inside the region instead; the
Prompter is what CLOC adds. Boxes are normalised xyxy on the original image; ``boxes_to_model_frame``
maps them into the padded square when the processor pads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cloc_mllm.configuration_cloc import PrompterConfig
from cloc_mllm.data.transforms import box_frame
from cloc_mllm.mllm.projector import MLPProjector
from cloc_mllm.prompter import Prompter

NO_BOX = -1.0  # fill value of padded rows in region_boxes


def region_boxes_tensor(regions: Sequence[Sequence[Sequence[float]]]) -> Tensor:
    """Per-image box lists -> ``(I, K_max, 4)``, rows past an image's own boxes filled with ``NO_BOX``."""
    longest = max((len(r) for r in regions), default=0)
    out = torch.full((len(regions), max(longest, 1), 4), NO_BOX)
    for i, boxes in enumerate(regions):
        if len(boxes):
            out[i, : len(boxes)] = torch.as_tensor([list(b) for b in boxes], dtype=torch.float32)
    return out


def boxes_to_model_frame(boxes: Tensor, image_size: tuple[int, int], image_processor) -> Tensor:
    """Normalised xyxy on the original image (K, 4) -> on the square the tower sees.

    The processor resizes (coordinates unchanged) or pads to a centred square first (``do_pad``); the
    map is ``data.transforms.box_frame``, the library's one place for box frames (docs/boxes.md).
    """
    mode = "pad" if getattr(image_processor, "do_pad", False) else "resize"
    return box_frame(*image_size, mode, image_processor.size["height"]).to_model(boxes)


class RegionEncoder(nn.Module):
    """Prompter (from the CLOC checkpoint) + MLP to the LLM width.

    ``forward``: vision tokens (I, N, C) last-layer patch tokens, boxes (I, K, 4) -> (I, K, H).
    """

    def __init__(self, prompter_config: dict, grid_size: int, embed_dim: int, text_hidden_size: int):
        super().__init__()
        self.prompter = Prompter(PrompterConfig(**prompter_config), grid_size, embed_dim)
        self.projector = MLPProjector(embed_dim, text_hidden_size, depth=2)

    def forward(self, vision_tokens: Tensor, boxes: Tensor) -> Tensor:
        embeds = self.prompter.encode_boxes(vision_tokens, boxes.clamp(0.0, 1.0).to(vision_tokens.dtype))
        return self.projector(embeds)
