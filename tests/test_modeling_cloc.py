import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel

import cloc_mllm
from cloc_mllm import CLOCConfig, CLOCModel

from .conftest import random_batch


def test_forward_losses_and_gradients(tiny_config):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config)
    batch = random_batch(tiny_config)
    batch["region_mask"][1] = False  # an image without regions still takes part in the CLIP loss
    out = model(**batch, return_loss=True)
    assert out.image_embeds.shape == (4, tiny_config.projection_dim)
    assert out.region_embeds.shape[0] == out.pred_boxes.shape[0] == 9
    num_patches = model.prompter.grid_size**2
    assert out.grounding_logits.shape == (9, num_patches)
    assert out.region_weight.item() == pytest.approx(3 / 4)
    expected = out.loss_clip + out.region_weight * (out.loss_region + out.loss_ground)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert model.prompter.layer.q_proj.weight.grad.abs().sum() > 0
    assert model.prompter.grounding_head[-1].weight.grad.abs().sum() > 0
    assert model.prompter.grounding_bias_scale.grad.abs() > 0  # the similarity map is trained
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_clip_mode_trains_no_region_parameters(tiny_config):
    config = CLOCConfig.from_dict({**tiny_config.to_dict(), "loss_mode": "clip"})
    model = CLOCModel(config)
    out = model(**random_batch(config), return_loss=True)
    assert out.region_embeds is None and out.loss_region is None
    out.loss.backward()
    assert model.prompter is None and model.roialign_head is None  # nothing built that no loss trains
    assert torch.allclose(out.loss, out.loss_clip)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5]]])
    pixels = random_batch(config, batch_size=1)["pixel_values"]
    assert model.get_region_features(pixel_values=pixels, boxes=boxes, head="clip_maskclip").shape == (1, 1, config.projection_dim)
    with pytest.raises(ValueError, match="loss_mode='clip': it has no Prompter"):
        model.get_region_features(pixel_values=pixels, boxes=boxes, head="prompter")
    with pytest.raises(ValueError, match="no Prompter"):
        model.ground(pixel_values=pixels, input_ids=torch.tensor([[1, 2]]))


def test_clip_checkpoint_saved_with_a_prompter_still_loads(tiny_config, tmp_path):
    """Checkpoints of CLIP-only runs made before the Prompter was left out hold its (untrained) weights."""
    clip_config = CLOCConfig.from_dict({**tiny_config.to_dict(), "loss_mode": "clip"})
    old = CLOCModel(tiny_config)
    old.config = clip_config
    old.save_pretrained(tmp_path)
    loaded = CLOCModel.from_pretrained(tmp_path)
    assert loaded.prompter is None
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, old.state_dict()[name], msg=name)


def test_no_regions_anywhere_gives_clip_loss(tiny_config):
    model = CLOCModel(tiny_config)
    batch = random_batch(tiny_config)
    batch["region_mask"][:] = False
    out = model(**batch, return_loss=True)
    assert out.region_weight.item() == 0.0
    assert torch.allclose(out.loss, out.loss_clip)


def test_siglip_option(tiny_config):
    config = CLOCConfig.from_dict(
        {**tiny_config.to_dict(), "contrastive_loss": "siglip", "grounding_loss": "giou"}
    )
    out = CLOCModel(config)(**random_batch(config), return_loss=True)
    assert torch.isfinite(out.loss)


def test_malformed_config_names_the_field():
    with pytest.raises(ValueError, match="CLOCConfig.grounding_loss"):
        CLOCConfig.from_preset("tiny", grounding_loss="l3")
    with pytest.raises(ValueError, match="PrompterConfig.attention"):
        CLOCConfig.from_preset("tiny", prompter_config={"attention": "sideways"})
    with pytest.raises(ValueError, match="prompter_config.hidden_size"):
        CLOCConfig.from_preset("tiny", prompter_config={"hidden_size": 64})
    with pytest.raises(ValueError, match="unknown CLOC preset"):
        CLOCConfig.from_preset("vit-z")


def test_save_and_load_through_auto_classes(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CLOCConfig)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CLOCModel)
    batch = random_batch(tiny_config)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.allclose(a.region_embeds, b.region_embeds, atol=1e-6)
    assert torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-6)


def test_exported_tower_loads_without_cloc(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config).eval()
    model.export_vision_tower(tmp_path / "tower")
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels).last_hidden_state
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoImageProcessor, CLIPVisionModel
        model = CLIPVisionModel.from_pretrained(r"{tmp_path / "tower"}").eval()
        AutoImageProcessor.from_pretrained(r"{tmp_path / "tower"}")
        with torch.no_grad():
            got = model(pixel_values=torch.load(r"{tmp_path / "pixels.pt"}")).last_hidden_state
        assert torch.allclose(got, torch.load(r"{tmp_path / "expected.pt"}"), atol=1e-6)
        assert "cloc_mllm" not in sys.modules
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


def test_from_clip_copies_towers(tmp_path):
    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                vocab_size=64,
                max_position_embeddings=16,
                eos_token_id=3,
            ),
            projection_dim=16,
        )
    ).eval()
    clip.save_pretrained(tmp_path)
    cloc = CLOCModel.from_clip(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    with torch.no_grad():
        # transformers 5 returns the projected features as ``pooler_output``
        image = clip.get_image_features(pixel_values=pixels).pooler_output
        text = clip.get_text_features(input_ids=ids).pooler_output
        assert torch.allclose(
            cloc.get_image_features(pixels), torch.nn.functional.normalize(image, dim=-1), atol=1e-5
        )
        assert torch.allclose(
            cloc.get_text_features(ids), torch.nn.functional.normalize(text, dim=-1), atol=1e-5
        )
    assert cloc.logit_scale.item() == pytest.approx(clip.logit_scale.item())
    assert cloc.config.prompter_config.hidden_size == 32


@pytest.mark.parametrize(
    "preset, vision, text, projection",
    [
        ("vit-b-16", (768, 3072, 12, 12, 224, 16), (512, 2048, 12, 8), 512),
        ("vit-l-14", (1024, 4096, 24, 16, 336, 14), (768, 3072, 12, 12), 768),
    ],
)
def test_big_presets_match_hf_clip_parameter_counts(preset, vision, text, projection):
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    with torch.device("meta"):
        cloc = CLOCModel(CLOCConfig.from_preset(preset))
        reference = CLIPModel(
            CLIPConfig(
                vision_config=dict(zip(keys + ("image_size", "patch_size"), vision)),
                text_config=dict(zip(keys, text)),
                projection_dim=projection,
            )
        )
    clip_parts = ("vision_model.", "text_model.", "visual_projection.", "text_projection.", "logit_scale")
    ours = sum(p.numel() for n, p in cloc.named_parameters() if n.startswith(clip_parts))
    assert ours == sum(p.numel() for p in reference.parameters())
    # The Prompter is light: one layer at the ViT width.
    prompter = sum(p.numel() for p in cloc.prompter.parameters())
    assert prompter < 0.1 * ours


def test_package_registers_model_type():
    assert AutoConfig.for_model("cloc").__class__ is CLOCConfig
    assert cloc_mllm.__version__


def _padded_phrases(config, lengths, width, seed=0):
    """Right-padded EOS-terminated phrases (R, width) of the given real lengths, and their mask."""
    text = config.text_config
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), text.pad_token_id)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(4, text.vocab_size - 1, (n - 1,), generator=g)
        ids[i, n - 1] = text.eos_token_id
        mask[i, :n] = 1
    return ids, mask


def test_distinct_phrases_trims_padding_and_merges_repeats(tiny_config):
    from cloc_mllm.modeling_cloc import distinct_phrases

    ids, mask = _padded_phrases(tiny_config, [3, 5, 2], width=12)
    ids, mask = torch.cat([ids, ids[:2]]), torch.cat([mask, mask[:2]])  # rows 3, 4 repeat rows 0, 1
    unique_ids, unique_mask, inverse = distinct_phrases(ids, mask)
    assert unique_ids.shape == unique_mask.shape == (3, 5)  # the longest phrase's 5 tokens
    assert torch.equal(unique_ids[inverse], ids[:, :5]) and torch.equal(unique_mask[inverse], mask[:, :5])
    unique_ids, none, inverse = distinct_phrases(ids, None)
    assert none is None and unique_ids.shape == (3, 12) and torch.equal(unique_ids[inverse], ids)


def test_split_by_length_encodes_the_fewest_token_positions(tiny_config):
    from cloc_mllm.modeling_cloc import split_by_length

    _, mask = _padded_phrases(tiny_config, [2, 3, 2, 2, 9], width=9)
    short, cut = split_by_length(mask)
    assert cut == 3 and short.tolist() == [True, True, True, True, False]  # 4 x 3 + 9 positions, not 5 x 9
    _, mask = _padded_phrases(tiny_config, [4, 4, 4], width=4)
    assert split_by_length(mask)[1] == 4  # one length: one call


def test_text_embedding_ignores_trailing_padding(tiny_config):
    """The causal CLIP text tower pools at EOS: columns past every phrase's end change nothing."""
    model = CLOCModel(tiny_config).eval()
    ids, mask = _padded_phrases(tiny_config, [3, 6, 2, 4], width=16)
    with torch.no_grad():
        full = model.get_text_features(ids, mask)
        trimmed = model.get_text_features(ids[:, :6], mask[:, :6])
    assert torch.allclose(full, trimmed, atol=1e-6)


def test_deduplicated_phrases_give_the_plain_loss_and_gradients(tiny_config):
    """Encoding each distinct, trimmed phrase once (short and long ones in separate calls) equals encoding
    every padded row, gradients included."""
    batch = random_batch(tiny_config, batch_size=4, num_regions=3)
    lengths = [3, 5, 2, 7, 3, 5, 4, 2, 6, 3, 5, 2]
    ids, mask = _padded_phrases(tiny_config, lengths, width=16)
    ids[6:], mask[6:] = ids[:6], mask[:6]  # half the phrases repeat the other half
    batch["region_input_ids"], batch["region_attention_mask"] = ids.view(4, 3, 16), mask.view(4, 3, 16)
    batch["region_mask"][2, 1] = False

    def loss_and_grads(model):
        out = model(**batch, return_loss=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    torch.manual_seed(0)
    model = CLOCModel(tiny_config)
    out, grads = loss_and_grads(model)
    model.zero_grad(set_to_none=True)
    model.encode_phrases = model.get_text_features  # the plain path: every row at full length
    plain, plain_grads = loss_and_grads(model)
    assert torch.allclose(out.loss, plain.loss, atol=1e-6)
    assert torch.allclose(out.region_text_embeds, plain.region_text_embeds, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        # fp32 sums in another order (a repeated token's embedding gradient is accumulated once per
        # distinct row): tolerance relative to the tensor's largest entry, not to each element
        scale = plain_grads[name].abs().max().clamp(min=1.0).item()
        assert torch.allclose(grad, plain_grads[name], atol=1e-6 * scale, rtol=1e-4), name


def test_a_misspelt_batch_key_is_refused_by_name(tiny_config):
    from cloc_mllm import CLOCModel

    batch = random_batch(tiny_config)
    batch["region_boxs"] = batch.pop("region_boxes")  # would silently drop the region loss if swallowed
    with pytest.raises(TypeError, match="region_boxs"):
        CLOCModel(tiny_config)(**batch, return_loss=True)
