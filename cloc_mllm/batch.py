"""The one training-batch contract between the collator and the model.

``CLOCCollator`` returns a ``CLOCBatch`` and ``CLOCModel.forward`` takes exactly its keys as keyword
arguments, so ``model(**batch)`` with a misspelt key is a TypeError naming it (never a CLOC run that
silently trains as CLIP). tests/test_collate.py checks that the three agree.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class CLOCBatch(TypedDict):
    """Shapes: B images, L caption tokens, M region slots per image, Lr phrase tokens."""

    pixel_values: Tensor  # (B, 3, S, S) in the model frame
    input_ids: Tensor  # (B, L) captions
    attention_mask: Tensor  # (B, L)
    region_boxes: Tensor  # (B, M, 4) normalised xyxy in the model frame; padded slots: the whole image
    region_input_ids: Tensor  # (B, M, Lr) region phrases, padded to the batch's longest
    region_attention_mask: Tensor  # (B, M, Lr)
    region_mask: Tensor  # (B, M) bool, True for real regions (padding never reaches a loss)
