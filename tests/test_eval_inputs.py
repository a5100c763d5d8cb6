import torch
from PIL import Image

from cloc_mllm.eval.inputs import ImageRef, load_images, normalised_boxes, open_image, tokenize
from tests.eval_helpers import tiny_cloc


def test_images_sizes_and_bad_files(tmp_path):
    Image.new("RGB", (40, 20), "red").save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert open_image(tmp_path / "broken.jpg") is None and open_image(tmp_path / "none.jpg") is None
    refs = [
        ImageRef(str(tmp_path / "a.png")),  # size from the file
        ImageRef(str(tmp_path / "a.png"), 400, 200),  # the annotation's size wins (boxes refer to it)
        ImageRef(str(tmp_path / "broken.jpg"), 8, 8),
        ImageRef(str(tmp_path / "none.jpg")),
    ]
    images, sizes = load_images(refs)
    assert [im is None for im in images] == [False, False, True, True]
    assert sizes == [[40, 20], [400, 200], [8, 8], [0, 0]]
    assert images[0].mode == "RGB"
    got = normalised_boxes([(10, 5, 20, 20)], (40, 20))
    assert torch.allclose(got, torch.tensor([[0.25, 0.25, 0.5, 1.0]]))


def test_tokenize_truncates_to_the_text_tower(tmp_path):
    from cloc_mllm.data.tokenizer import train_world_tokenizer

    tokenizer = train_world_tokenizer(["a red circle", "a blue square"], vocab_size=300)
    model = tiny_cloc(tokenizer)
    batch = tokenize(tokenizer, ["a red circle " * 40, "a square"], model, "cpu")
    assert batch["input_ids"].shape == (2, model.config.text_config.max_position_embeddings)
    assert batch["input_ids"][0, -1] == tokenizer.eos_token_id  # truncation keeps the pooled EOS token
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
