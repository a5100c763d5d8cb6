"""Captioner stage: caption modes, and a tiny random BLIP loaded with from_pretrained like a real one."""

import pytest
from PIL import Image

from cloc_mllm.vesl import tiny
from cloc_mllm.vesl.captioner import DETAILED_PROMPT, HFCaptioner, compose_caption


def test_compose_caption_modes():
    assert compose_caption("  a dog  on grass ", None, "keep") == "a dog on grass"
    assert compose_caption("a dog", "a brown dog on green grass", "replace") == "a brown dog on green grass"
    assert (
        compose_caption("a dog", "a brown dog on green grass", "both") == "a dog. a brown dog on green grass"
    )
    assert compose_caption("A dog!", "a brown dog", "both") == "A dog! a brown dog"
    assert compose_caption("", "a brown dog", "both") == "a brown dog"  # no alt-text: just the new one
    assert compose_caption("", None, "keep") == ""
    with pytest.raises(ValueError, match="needs a captioner"):
        compose_caption("a dog", None, "replace")
    with pytest.raises(ValueError, match="unknown caption mode 'merge'"):
        compose_caption("a dog", None, "merge")


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return tiny.save_parts(tiny.blip_parts(), tmp_path_factory.mktemp("blip"))


def test_tiny_blip_captions_batches_deterministically(blip_dir):
    captioner = HFCaptioner.from_pretrained(blip_dir, max_new_tokens=8)
    assert not captioner.chat and captioner.prompt is None  # a plain captioner gets no instruction
    images = [Image.new("RGB", (64, 40), "red"), Image.new("RGB", (30, 50), "blue")]
    captions = captioner(images)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert captioner(images) == captions  # greedy decoding: re-runs write the same shards
    assert captioner(images[1:]) == captions[1:]  # a caption does not depend on its batch-mates
    assert captioner([]) == []


def test_plain_captioner_continues_its_prefix(blip_dir):
    captioner = HFCaptioner.from_pretrained(blip_dir, prompt="a picture of", max_new_tokens=6)
    (caption,) = captioner([Image.new("RGB", (48, 48), "green")])
    assert caption.startswith("a picture of") and len(caption) > len("a picture of")


def test_chat_captioner_gets_an_instruction_and_returns_only_new_text(tmp_path):
    path = tiny.save_parts(tiny.llava_parts(), tmp_path / "llava")
    captioner = HFCaptioner.from_pretrained(path, max_new_tokens=6)
    assert captioner.chat and captioner.prompt == DETAILED_PROMPT
    assert captioner.processor.tokenizer.padding_side == "left"
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 50), "blue")]
    captions = captioner(images)
    assert all(c and "USER" not in c and "Describe" not in c for c in captions)  # the prompt is cut off
    # left padding: each image's caption is the same alone as in a batch
    assert [captioner([image])[0] for image in images] == captions
