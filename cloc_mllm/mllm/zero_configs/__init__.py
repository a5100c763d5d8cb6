"""DeepSpeed ZeRO configs of the finetuning (LLaVA's ``zero2`` / ``zero3`` / ``zero3_offload``), shipped
inside the package so an installed cloc-mllm launches them from any directory; ``finetune/*.json`` in
a checkout are links to these files. Their ``auto`` values are filled by the HF Trainer."""

from __future__ import annotations

from pathlib import Path

ZERO_CONFIGS = ("zero2", "zero3", "zero3_offload")


def zero_config(name_or_path: str) -> Path:
    """A shipped config by name (``zero2``, ...) or any DeepSpeed json file by path."""
    if name_or_path in ZERO_CONFIGS:
        return Path(__file__).with_name(f"{name_or_path}.json")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no DeepSpeed config there (shipped ones: {', '.join(ZERO_CONFIGS)})")
    return path
