"""Text tokenizers: any Hugging Face tokenizer for real runs, and a small one trained on the world.

CLIP's vocabulary cannot be downloaded on every machine, so the synthetic world trains its own real
tokenizer (HF ``tokenizers``) and saves it as a ``PreTrainedTokenizerFast`` directory. It is byte-level
BPE over lowercased text: spaces and punctuation survive a decode round trip (a box the LLM writes as
"[120, 45, 600, 999]" decodes to exactly that; only a text's leading whitespace is not kept), no
character is ever unknown, and every digit is its own token so a tiny model can learn 0-999 box
coordinates digit by digit.

Special ids are fixed. The CLIP text tower pools at ``eos_token_id``; transformers falls back to legacy
argmax pooling when that id is 2, so eos is 3, never 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3 in this order
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

# Words a chat model over the world will need even if a tiny world's texts lack some of them.
EXTRA_TEXTS = (
    "0 1 2 3 4 5 6 7 8 9 [0, 0, 999, 999] [ ] , . ? ! : ; ' \" ( ) - / \n",
    "user assistant system human gpt you i me it is are was the a an and or of in on at to with for",
    "what where which who how many is there describe the image picture photo region box object objects",
    "please answer yes no this that these those give locate find show tell me about",
    "left right top bottom above below side center middle small large big",
)


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # A prefix space makes a word the same token at the start of a text as inside it ("red" in "red
    # circle" and "a red circle"); the decoder strips that one space again. Digits are split after the
    # byte mapping, which leaves them as they are.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=True), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return tok


def train_world_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path | None = None,
    vocab_size: int = 1024,
    model_max_length: int = 77,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (plus ``EXTRA_TEXTS``), wrap it for transformers,
    and save it to ``out_dir`` when given. ``encode`` adds bos/eos; ids 0-3 are pad/unk/bos/eos."""
    if not 260 < vocab_size <= 65536:
        raise ValueError(f"vocab_size={vocab_size}: needs room for the 256 bytes and 4 specials (> 260)")
    tok = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*EXTRA_TEXTS, *texts], trainer=trainer)
    for token, expected in zip(SPECIAL_TOKENS, range(4), strict=True):
        if tok.token_to_id(token) != expected:  # a tokenizers change would silently move eos
            raise RuntimeError(
                f"special token {token!r} got id {tok.token_to_id(token)}, expected {expected}"
            )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
    )
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


def load_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerBase:
    """Any HF tokenizer by hub id or directory (never running code shipped with it)."""
    return AutoTokenizer.from_pretrained(str(name_or_dir), trust_remote_code=False)
