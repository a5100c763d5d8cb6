"""Deprecated location of :mod:`cloc_mllm.box_text` (boxes as text now sit beside the other box code)."""

import warnings

from cloc_mllm.box_text import BOX_TEXT_SCALE, Box, format_box, format_box_numbers, parse_boxes  # noqa: F401

warnings.warn(
    "cloc_mllm.mllm.box_text moved to cloc_mllm.box_text; this alias will be removed", DeprecationWarning, stacklevel=2
)
