import pytest
import torch

from cloc_mllm import CLOCModel
from cloc_mllm.prompter import FourierPositionEncoding, box_patch_coverage, patch_centres

from .conftest import random_batch


def test_coverage_hand_computed():
    # 2x2 grid; a box over the left half covers cells 0 and 2 fully, nothing else.
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 0.25]]])
    cov = box_patch_coverage(boxes, grid_size=2)
    assert cov[0, 0].tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0])
    # A box smaller than a cell: its best cell still gets weight 1.
    assert cov[0, 1].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_fourier_codes_separate_neighbouring_patches():
    enc = FourierPositionEncoding(64, max_frequency=16)
    codes = enc(patch_centres(8))  # (64, 64)
    sims = torch.nn.functional.normalize(codes, dim=-1) @ torch.nn.functional.normalize(codes, dim=-1).t()
    off_diagonal = sims - torch.eye(64) * 2
    assert off_diagonal.max() < 0.95  # every patch is distinguishable from every other


def test_region_features_reuse_tokens_and_are_independent_per_box(tiny_config):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config).eval()
    batch = random_batch(tiny_config, batch_size=2, num_regions=3)
    with torch.no_grad():
        direct = model.get_region_features(batch["pixel_values"], batch["region_boxes"])
        tokens = model.get_vision_tokens(batch["pixel_values"])
        cached = model.get_region_features(boxes=batch["region_boxes"], vision_tokens=tokens)
        single = model.get_region_features(boxes=batch["region_boxes"][:, 1:2], vision_tokens=tokens)
    assert direct.shape == (2, 3, tiny_config.projection_dim)
    assert torch.allclose(direct, cached, atol=1e-6)
    assert torch.allclose(single[:, 0], cached[:, 1], atol=1e-5)
    assert torch.allclose(direct.norm(dim=-1), torch.ones(2, 3), atol=1e-5)


def test_cross_attention_equals_prompt_rows_of_full_layer(tiny_config):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config).eval()
    prompter = model.prompter
    batch = random_batch(tiny_config, batch_size=2, num_regions=3)
    with torch.no_grad():
        tokens = model.get_vision_tokens(batch["pixel_values"])
        prompts = prompter.prompt_encoder.box_tokens(batch["region_boxes"])
        pe = prompter.prompt_encoder.image_positions()
        bias = prompter._box_bias(box_patch_coverage(batch["region_boxes"], prompter.grid_size))
        cross = prompter.layer(prompts, tokens, pe, bias)
        full = prompter.layer.forward_full(prompts, tokens, pe, bias)
    assert full.shape == (2, 3, 2 + tokens.shape[1], tiny_config.prompter_config.hidden_size)
    assert torch.allclose(cross, full[:, :, :2], atol=1e-5)


def test_full_variant_and_box_bias_change_embeddings(tiny_config):
    torch.manual_seed(0)
    cross = CLOCModel(tiny_config).eval()
    full_config = tiny_config.__class__.from_dict(tiny_config.to_dict())
    full_config.prompter_config.attention = "full"
    full = CLOCModel(full_config).eval()
    full.load_state_dict(cross.state_dict())
    batch = random_batch(tiny_config, batch_size=1, num_regions=2)
    with torch.no_grad():
        a = cross.get_region_features(batch["pixel_values"], batch["region_boxes"])
        b = full.get_region_features(batch["pixel_values"], batch["region_boxes"])
        cross.prompter.box_bias_scale.fill_(0.0)
        c = cross.get_region_features(batch["pixel_values"], batch["region_boxes"])
    assert not torch.allclose(a, b, atol=1e-4)  # the paper variant pools image rows too
    assert not torch.allclose(a, c, atol=1e-4)  # the coverage bias is live


def test_grounding_returns_valid_boxes(tiny_config):
    model = CLOCModel(tiny_config).eval()
    batch = random_batch(tiny_config, batch_size=3)
    with torch.no_grad():
        boxes = model.ground(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert boxes.shape == (3, 4)
    assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 1


def test_roialign_heads(tiny_config):
    config = tiny_config.__class__.from_dict({**tiny_config.to_dict(), "region_head": "roialign"})
    model = CLOCModel(config).eval()
    batch = random_batch(config, batch_size=2)
    with torch.no_grad():
        trained = model.get_region_features(batch["pixel_values"], batch["region_boxes"])
        clip = model.get_region_features(batch["pixel_values"], batch["region_boxes"], head="clip_roialign")
    assert trained.shape == clip.shape == (2, 3, config.projection_dim)
    with pytest.raises(ValueError, match="no trained RoIAlign head"):
        CLOCModel(tiny_config).get_region_features(
            batch["pixel_values"], batch["region_boxes"], head="roialign"
        )


def test_maskclip_read_out_is_the_last_layers_value_path(tiny_config):
    model = CLOCModel(tiny_config).eval()
    batch = random_batch(tiny_config, batch_size=2)
    pixels, boxes = batch["pixel_values"], batch["region_boxes"]
    tower = model.vision_model
    with torch.no_grad():
        value = model.get_value_tokens(pixels)
        # by hand from the HF layers: embeddings -> pre-LN -> all but the last layer -> its value path
        x = tower.pre_layrnorm(tower.embeddings(pixels))
        for layer in tower.encoder.layers[:-1]:
            x = layer(x, attention_mask=None)
        last = tower.encoder.layers[-1]
        expected = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))[:, 1:]
        torch.testing.assert_close(value, expected)
        pooled = model.get_region_features(pixels, boxes, head="clip_maskclip")
        reused = model.get_region_features(vision_tokens=value, boxes=boxes, head="clip_maskclip")
        paper = model.get_region_features(pixels, boxes, head="clip_roialign")
    torch.testing.assert_close(pooled, reused)
    assert not torch.allclose(pooled, paper, atol=1e-4)


def test_clip_loss_trains_the_value_path_but_not_the_last_layers_patch_outputs(tiny_config):
    """Why the MaskCLIP read-out exists: only the CLS row of the last layer reaches the CLIP loss."""
    config = tiny_config.__class__.from_dict({**tiny_config.to_dict(), "loss_mode": "clip"})
    model = CLOCModel(config)
    batch = random_batch(config, batch_size=3)
    outputs = {}
    hook = model.vision_model.encoder.layers[-1].register_forward_hook(
        lambda module, args, out: outputs.setdefault("last", out).retain_grad()
    )
    model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], return_loss=True).loss.backward()
    hook.remove()
    grad = outputs["last"].grad  # (B, 1 + N, C)
    assert grad[:, 0].abs().sum() > 0
    assert grad[:, 1:].abs().sum() == 0
    assert model.vision_model.encoder.layers[-1].self_attn.v_proj.weight.grad.abs().sum() > 0


def test_attention_box_estimate_recovers_a_uniform_box():
    from cloc_mllm.prompter import attention_box_estimate

    grid = 8
    centres = patch_centres(grid)
    box = torch.tensor([[[0.25, 0.5, 0.75, 1.0]]])  # covers columns 2..5, rows 4..7 exactly
    inside = box_patch_coverage(box, grid)[0, 0] > 0.99
    attention = (inside.float() / inside.sum())[None, None]  # (1, 1, N) uniform over the box
    estimate = attention_box_estimate(attention, centres)[0, 0]
    # centre exact; width from the std of 4 discrete columns: sqrt(12 * (16 - 1) / 12) / 8 = sqrt(15) / 8
    assert estimate[:2].tolist() == pytest.approx([0.5, 0.75])
    assert estimate[2].item() == pytest.approx(15**0.5 / 8, rel=1e-4)
    assert estimate[3].item() == pytest.approx(15**0.5 / 8, rel=1e-4)


def test_patch_cell_boxes_tile_the_image():
    from cloc_mllm.prompter import patch_cell_boxes

    cells = patch_cell_boxes(2)
    assert cells.tolist() == [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]


def test_similarity_bias_steers_grounding_attention_to_the_matching_cell(tiny_config):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config).eval()
    prompter = model.prompter
    batch = random_batch(tiny_config, batch_size=1)
    target = 5  # a text equal to cell 5's own region embedding must pull the attention there
    with torch.no_grad():
        tokens = model.get_vision_tokens(batch["pixel_values"])
        cell_box = prompter.cell_boxes[target][None, None]  # (1, 1, 4)
        text = torch.nn.functional.normalize(prompter.encode_boxes(tokens, cell_box), dim=-1)  # (1, 1, D)
        bias = prompter._text_similarity_bias(tokens, text)  # (1, 1, N)
        prompter.grounding_bias_scale.fill_(1e4)
        prompts = prompter.prompt_encoder.text_tokens(text)
        pe = prompter.prompt_encoder.image_positions()
        _, attention = prompter.layer(prompts, tokens, pe, prompter._text_similarity_bias(tokens, text), return_attention=True)
        steered = prompter.ground(tokens, text)
        prompter.grounding_bias_scale.fill_(0.0)
        unsteered = prompter.ground(tokens, text)
    assert bias.shape == (1, 1, tokens.shape[1])
    assert int(bias[0, 0].argmax()) == target
    assert attention[0, 0, 0, target] > 0.99
    assert not torch.allclose(steered, unsteered)


def test_coarse_cells_give_every_patch_its_cells_similarity(tiny_config):
    """grounding_cell_size=2 encodes a quarter of the cells; each patch reads the cosine of its 2x2 cell."""
    torch.manual_seed(0)
    tiny_config.prompter_config.grounding_cell_size = 2
    model = CLOCModel(tiny_config).eval()
    prompter, grid = model.prompter, model.prompter.grid_size
    batch = random_batch(tiny_config, batch_size=2)
    with torch.no_grad():
        tokens = model.get_vision_tokens(batch["pixel_values"])
        text = torch.randn(2, 3, tiny_config.projection_dim)
        bias = prompter._text_similarity_bias(tokens, text)  # (2, 3, N)
        cell = torch.tensor([[[0.5, 0.0, 1.0, 0.5]]]).expand(2, 1, 4)  # the top-right 2x2 cell
        expected = torch.nn.functional.cosine_similarity(text, prompter.encode_boxes(tokens, cell), dim=-1)
    assert prompter.cell_boxes.shape == ((grid // 2) ** 2, 4)
    assert bias.shape == (2, 3, grid * grid)
    blocks = bias.unflatten(-1, (grid // 2, 2, grid // 2, 2))  # (B, K, row cell, row, column cell, column)
    assert torch.equal(blocks, blocks[..., :1, :, :1].expand_as(blocks))  # constant inside each cell
    top_right = [r * grid + c for r in range(2) for c in range(grid - 2, grid)]
    assert torch.allclose(bias[..., top_right], (prompter.grounding_bias_scale.abs() * expected)[..., None], atol=1e-5)


def test_grounding_cell_size_is_checked():
    from cloc_mllm import CLOCConfig

    with pytest.raises(ValueError, match="must divide the patch grid's side"):
        CLOCConfig.from_preset("tiny", prompter_config={"grounding_cell_size": 3})  # 8 x 8 patches
    with pytest.raises(ValueError, match="grounding_cell_size must be an integer"):
        CLOCConfig.from_preset("tiny", prompter_config={"grounding_cell_size": 2.0})


@pytest.mark.parametrize("cell_size", [1, 2])
def test_prompter_buffers_survive_save_and_load(tiny_config, tmp_path, cell_size):
    tiny_config.prompter_config.grounding_cell_size = cell_size
    model = CLOCModel(tiny_config)
    model.save_pretrained(tmp_path)
    loaded = CLOCModel.from_pretrained(tmp_path)
    assert loaded.config.prompter_config.grounding_cell_size == cell_size
    assert torch.equal(loaded.prompter.cell_boxes, model.prompter.cell_boxes)
    assert torch.equal(loaded.prompter.cell_of_patch, model.prompter.cell_of_patch)
    assert torch.equal(loaded.prompter.prompt_encoder.centres, model.prompter.prompt_encoder.centres)


def test_content_token_is_the_mean_of_the_tokens_under_the_box(tiny_config):
    model = CLOCModel(tiny_config).eval()
    prompter = model.prompter
    grid = prompter.grid_size
    tokens = torch.randn(1, grid * grid, tiny_config.prompter_config.hidden_size)
    box = torch.tensor([[[0.0, 0.0, 2.0 / grid, 1.0 / grid]]])  # exactly cells 0 and 1
    with torch.no_grad():
        prompter.content_type_embedding.zero_()
        content = prompter._content_token(tokens, box_patch_coverage(box, grid))
    assert content.shape == (1, 1, 1, tokens.shape[-1])
    assert torch.allclose(content[0, 0, 0], tokens[0, :2].mean(0), atol=1e-6)
