import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
)

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava, load_vision_tower, num_image_tokens
from cloc_mllm.mllm.modeling_cloc_llava import ClocLlavaForConditionalGeneration
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    tok = train_world_tokenizer(["where is the red circle", "a blue square"], vocab_size=300)
    return str(write_tiny_tower(root / "tower")), str(write_tiny_llm(root / "llm", tok))


def test_plain_llava_keeps_pretrained_weights(parts):
    tower_dir, llm_dir = parts
    model, processor = build_llava(LlavaBuildArgs(tower_dir, llm_dir))
    assert type(model) is LlavaForConditionalGeneration
    tower, llm = CLIPVisionModel.from_pretrained(tower_dir), AutoModelForCausalLM.from_pretrained(llm_dir)
    assert torch.equal(
        model.model.vision_tower.embeddings.patch_embedding.weight, tower.embeddings.patch_embedding.weight
    )
    assert torch.equal(
        model.model.language_model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight
    )
    old = llm.config.vocab_size
    assert torch.equal(model.lm_head.weight[:old], llm.lm_head.weight)
    # New token rows (<image>) start at the mean of the old ones: a rebuild gives the same model.
    assert torch.allclose(model.lm_head.weight[old:], llm.lm_head.weight.mean(0, keepdim=True))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") == old
    assert model.config.image_seq_length == 16 and model.config.vision_feature_layer == -2


def test_image_token_count_follows_tower_config(parts):
    tower_dir, llm_dir = parts
    model, processor = build_llava(LlavaBuildArgs(tower_dir, llm_dir, mm_vision_select_feature="cls_patch"))
    assert model.config.vision_feature_select_strategy == "full"
    assert num_image_tokens(model.config.vision_config, "cls_patch") == 17 == model.config.image_seq_length
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nhi"}], add_generation_prompt=True
    )
    batch = processor(
        images=[Image.new("RGB", (50, 20))], text=[text], add_special_tokens=False, return_tensors="pt"
    )
    assert (batch["input_ids"] == model.config.image_token_id).sum() == 17
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_images_are_resized_not_cropped(parts):
    tower_dir, llm_dir = parts
    image = np.full((32, 64, 3), 255, np.uint8)
    image[:, :8] = (255, 0, 0)  # a red strip on the left edge: centre-cropping would cut it away
    for aspect, rows in (("resize", slice(None)), ("pad", slice(8, 24))):
        _, processor = build_llava(LlavaBuildArgs(tower_dir, llm_dir, image_aspect_ratio=aspect))
        pixels = processor.image_processor(Image.fromarray(image), return_tensors="pt")["pixel_values"][0]
        assert pixels.shape == (3, 32, 32)
        red_minus_green = pixels[0] - pixels[1]
        assert (red_minus_green[rows, :3] > 1).all() and (red_minus_green[rows, 6:].abs() < 0.5).all()
        if aspect == "pad":  # padded rows are the mean colour, i.e. ~0 after normalisation
            assert pixels[:, :6].abs().max() < 0.1


def test_linear_projector_stays_plain_llava(parts, tmp_path):
    model, processor = build_llava(LlavaBuildArgs(*parts, mm_projector_type="linear"))
    assert type(model) is LlavaForConditionalGeneration and model.config.projector_hidden_act == "linear"
    linear_2 = model.model.multi_modal_projector.linear_2
    assert (
        torch.equal(linear_2.weight, torch.eye(linear_2.weight.shape[0]))
        and not linear_2.weight.requires_grad
    )


def test_deep_projector_uses_cloc_llava_and_reloads(parts, tmp_path):
    model, processor = build_llava(LlavaBuildArgs(*parts, mm_projector_type="mlp3x_gelu"))
    assert type(model) is ClocLlavaForConditionalGeneration and model.config.model_type == "cloc_llava"
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(again) is ClocLlavaForConditionalGeneration
    x = torch.randn(1, 16, 32)
    assert torch.allclose(again.model.multi_modal_projector(x), model.model.multi_modal_projector(x))


def test_patch_position_llava_reloads_and_moves_tokens_by_place(parts, tmp_path):
    model, processor = build_llava(LlavaBuildArgs(*parts, mm_patch_position=True))
    assert type(model) is ClocLlavaForConditionalGeneration and model.config.patch_position
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    x = torch.randn(1, 16, 32)
    assert torch.allclose(again.model.multi_modal_projector(x), model.model.multi_modal_projector(x))
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nhi"}], add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (32, 32))], text=[text], add_special_tokens=False, return_tensors="pt")
    projector = again.model.multi_modal_projector
    with torch.no_grad():  # what the LLM receives in the image placeholders: projected patches + their place
        image_rows = again(**batch, output_hidden_states=True).hidden_states[0][0][
            batch["input_ids"][0] == again.config.image_token_id
        ]  # (16, H)
        patches = again.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[-2]
        place = (projector.row_embed[:, None] + projector.column_embed[None]).flatten(0, 1)  # (16, H)
        assert torch.allclose(image_rows, projector.projector(patches[0, 1:]) + place, atol=1e-5)


def test_token_scaled_patch_position_llava_reloads_with_its_scale(parts, tmp_path):
    model, processor = build_llava(LlavaBuildArgs(*parts, mm_patch_position=True, mm_patch_position_scale="token"))
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert again.config.patch_position_scale == "token" and again.model.multi_modal_projector.scale == "token"
    x = torch.randn(1, 16, 32)
    assert torch.allclose(again.model.multi_modal_projector(x), model.model.multi_modal_projector(x))
    with pytest.raises(ValueError, match="needs mm_patch_position=True"):
        build_llava(LlavaBuildArgs(*parts, mm_patch_position_scale="token"))


def test_row_column_llava_sees_each_patch_twice_and_generates_after_reload(parts, tmp_path):
    model, processor = build_llava(LlavaBuildArgs(*parts, mm_patch_order="row_column", mm_patch_position=True))
    assert model.config.model_type == "cloc_llava" and model.config.image_seq_length == 32  # 4x4 grid, twice
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nhi"}], add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (32, 32))], text=[text], add_special_tokens=False, return_tensors="pt")
    image = batch["input_ids"][0] == again.config.image_token_id
    assert int(image.sum()) == 32  # the processor writes as many placeholders as the projector fills
    with torch.no_grad():
        image_rows = again(**batch, output_hidden_states=True).hidden_states[0][0][image]  # (32, H)
        assert again.generate(**batch, max_new_tokens=2, do_sample=False).shape[1] == batch["input_ids"].shape[1] + 2
    raster, columns = image_rows[:16].reshape(4, 4, -1), image_rows[16:].reshape(4, 4, -1)
    assert torch.allclose(columns, raster.transpose(0, 1))  # the same tokens, places and all, column-major
    assert not torch.allclose(raster, raster.transpose(0, 1), atol=1e-3)


def test_rejects_non_clip_tower(parts, tmp_path):
    AutoModelForCausalLM.from_pretrained(parts[1]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="must be a CLIP-format model"):
        load_vision_tower(str(tmp_path))


def test_cloc_checkpoint_gives_its_vision_tower(tiny_config, tmp_path):
    from cloc_mllm import CLOCModel

    cloc = CLOCModel(tiny_config)
    cloc.save_pretrained(tmp_path)
    tower = load_vision_tower(str(tmp_path))
    assert torch.equal(
        tower.embeddings.patch_embedding.weight, cloc.vision_model.embeddings.patch_embedding.weight
    )


def test_digit_started_patch_positions_are_the_llms_own_digit_embeddings(tmp_path):
    tok = train_world_tokenizer(["where is the red circle", "[125, 375, 625, 875] 0 2 4 5 7 9"], vocab_size=300)
    tower, llm = str(write_tiny_tower(tmp_path / "tower")), str(write_tiny_llm(tmp_path / "llm", tok))
    model, processor = build_llava(LlavaBuildArgs(
        tower, llm, mm_patch_position=True, mm_patch_position_scale="token", mm_patch_position_init="digits"))  # fmt: skip
    projector, tokenizer = model.model.multi_modal_projector, processor.tokenizer
    # a 4x4 grid's patch centres on the 0-999 box scale: 125, 375, 625, 875 -> hundreds digits 1, 3, 6, 8
    digits = model.get_input_embeddings().weight[[tokenizer.convert_tokens_to_ids(d) for d in "1368"]]
    for embed in (projector.row_embed, projector.column_embed):
        cosine = torch.nn.functional.cosine_similarity(embed, digits, dim=-1)
        assert torch.allclose(cosine, torch.ones(4), atol=1e-5)
        assert torch.allclose(embed.pow(2).mean(-1), torch.full((4,), 0.5), rtol=0.3)  # the random start's RMS
    with pytest.raises(ValueError, match="needs mm_patch_position=True"):
        build_llava(LlavaBuildArgs(tower, llm, mm_patch_position_init="digits"))
    with pytest.raises(ValueError, match="mm_patch_position_init must be one of"):
        build_llava(LlavaBuildArgs(tower, llm, mm_patch_position=True, mm_patch_position_init="sine"))
