"""LLaVA with a CLOC (or CLIP) vision tower: builder, data, training, region prompts, inference.

Submodules are imported where used, so importing one stays cheap. The ``cloc_llava`` model type
registers itself with the Auto classes when ``modeling_cloc_llava`` is imported (``inference`` and
``builder`` do so when they need it).
"""
