"""Random-weight VESL models built from configs: tests, benchmarks and offline smoke runs need no download.

The tokenizers are character level (every letter is a token), which is all a random model needs and lets
any phrase be encoded without a learned vocabulary.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = string.ascii_lowercase + string.digits + " .,'-"


def char_vocab(specials: list[str], end_of_word: str = "") -> dict[str, int]:
    """specials first, then each character (and its end-of-word variant when given)."""
    vocab = {token: i for i, token in enumerate(specials)}
    for ch in CHARS.replace(" ", ""):
        for token in (ch, ch + end_of_word) if end_of_word else (ch,):
            vocab.setdefault(token, len(vocab))
    return vocab


def owl_parts(
    image_size: int = 64,
    patch_size: int = 16,
    hidden: int = 32,
    layers: int = 2,
    full_text: bool = False,
    seed: int = 0,
):
    """(Owlv2ForObjectDetection, Owlv2Processor) with random weights.

    ``full_text`` keeps OWLv2-B's text tower (512 wide, 12 layers, 49408 tokens) for real-size benchmarks.
    """
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    # CLIP's vocabulary keeps id 0 for "!": OWL treats a query whose first id is 0 as padding.
    vocab = char_vocab(["!"], end_of_word="</w>")
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=0, max_position_embeddings=16)
    if not full_text:
        text.update(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden)
        text.update(num_hidden_layers=layers, num_attention_heads=2)
    vision = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers)
    vision.update(num_attention_heads=max(2, hidden // 64), image_size=image_size, patch_size=patch_size)
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=512 if full_text else hidden)
    image_processor = Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
    tame_owl_heads(model)
    return model, Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)


@torch.no_grad()
def tame_owl_heads(model) -> None:
    """Give random OWL heads the ranges of trained ones instead of saturated sigmoids: each box is its patch
    cell (OWL's box bias alone) and scores spread around 0.5 (logits = cosine similarity)."""
    for layer in (model.class_head.logit_shift, model.class_head.logit_scale, model.box_head.dense2):
        layer.weight.zero_()
        layer.bias.zero_()


def owlv2_base_parts():
    """OWLv2-B/16 shapes (960 px, 3600 patches, ViT-B vision and CLIP text towers), random weights."""
    return owl_parts(image_size=960, patch_size=16, hidden=768, layers=12, full_text=True)


def blip_parts(image_size: int = 32, hidden: int = 32, layers: int = 2, seed: int = 0):
    """(BlipForConditionalGeneration, BlipProcessor) with random weights and a word-level vocabulary."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    words = "a an the of on in and with picture photo red green blue yellow small large circle square star"
    vocab = char_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words.split()])
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    common = dict(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2
    )
    text = dict(common, vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=5, pad_token_id=0)
    text.update(sep_token_id=3, eos_token_id=3)
    config = BlipConfig(
        text_config=text,
        vision_config=dict(common, image_size=image_size, patch_size=16),
        projection_dim=hidden,
    )
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


# A Vicuna-style template: what LLaVA-1.5 checkpoints carry, reduced to one user turn with images.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llava_parts(image_size: int = 32, patch_size: int = 8, hidden: int = 32, seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor) with a chat template: a tiny chat captioner."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = (
        "USER: ASSISTANT: a an the of on in and with red green blue small large circle square star".split()
    )
    vocab = char_vocab(["<pad>", "<unk>", "<s>", "</s>", "<image>", *words])
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip
    num_patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=vocab["<image>"], image_seq_length=num_patches
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    size = {"height": image_size, "width": image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size=size, crop_size=size, do_center_crop=False),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the default strategy drops
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def save_parts(parts, path: str | Path) -> str:
    """Save a (model, processor) pair so ``from_pretrained(path)`` loads it; returns the path."""
    model, processor = parts
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
