import pytest
from PIL import Image

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.inference import generate_answers, load_mllm
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    tok = train_world_tokenizer(["where is the red circle", "a blue square [1, 2, 3, 4]"], vocab_size=300)
    model, processor = build_llava(
        LlavaBuildArgs(str(write_tiny_tower(root / "t")), str(write_tiny_llm(root / "l", tok)))
    )
    model.save_pretrained(root / "out")
    processor.save_pretrained(root / "out")
    return root / "out"


def test_batched_generation_matches_one_by_one(model_dir):
    model, processor = load_mllm(model_dir, device="cpu")
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    prompts = [
        "where is the red circle?",
        "a blue square",
        "<image>\nwhere is the small blue square on the left?",
    ]
    batched = generate_answers(model, processor, images, prompts, max_new_tokens=6, batch_size=3)
    single = [
        generate_answers(model, processor, [im], [p], max_new_tokens=6)[0]
        for im, p in zip(images, prompts, strict=True)
    ]
    assert batched == single and all(isinstance(a, str) for a in batched)
    assert processor.tokenizer.padding_side == "right"  # left padding only while generating


def test_mismatched_inputs_rejected(model_dir):
    model, processor = load_mllm(model_dir, device="cpu")
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        generate_answers(model, processor, [Image.new("RGB", (8, 8))] * 2, ["hi"])
    with pytest.raises(ValueError, match="not trained with region prompts"):
        generate_answers(model, processor, [Image.new("RGB", (8, 8))], ["hi"], regions=[[(0, 0, 1, 1)]])
