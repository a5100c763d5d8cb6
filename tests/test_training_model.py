import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.training.model import build_model, freeze_unused_parameters, load_model_weights

from .conftest import random_batch
from .pretrain_utils import TINY_MODEL, tiny_config, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizer(world):
    return load_tokenizer(world / "tokenizer")


def test_preset_model_follows_the_tokenizer(world, tokenizer, tmp_path):
    model = build_model(tiny_config(world, tmp_path), tokenizer)
    text = model.config.text_config
    assert text.vocab_size == len(tokenizer) and text.eos_token_id == tokenizer.eos_token_id
    assert model.config.vision_config.hidden_size == 32


@pytest.mark.parametrize(
    ("loss", "head", "frozen_prefixes"),
    [
        ("cloc", "prompter", ("logit_bias",)),
        (
            "cloc",
            "roialign",
            ("logit_bias", "prompter.box_bias", "prompter.prompt_encoder.corner", "prompter.region_"),
        ),
        ("clip", "prompter", ("logit_bias", "region_logit_scale")),  # and no Prompter is built
    ],
)
def test_unused_parameters_are_frozen(world, tokenizer, tmp_path, loss, head, frozen_prefixes):
    model = build_model(tiny_config(world, tmp_path, loss=loss, region_head=head), tokenizer)
    rng = torch.get_rng_state()
    frozen = freeze_unused_parameters(model)
    assert torch.equal(rng, torch.get_rng_state())  # the probe leaves the RNG as it was
    assert frozen and all(name.startswith(frozen_prefixes) for name in frozen)
    if loss == "clip":
        assert model.prompter is None and model.roialign_head is None
    else:
        assert any(p.requires_grad for n, p in model.named_parameters() if n.startswith("prompter."))
    # Every parameter still trainable gets a gradient from a real batch: DDP needs no unused search.
    model(**random_batch(model.config, batch_size=3, num_regions=2), return_loss=True).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_clip_checkpoint_must_fit_the_tokenizer(world, tokenizer, tmp_path):
    vision = {k: v for k, v in TINY_MODEL["vision_config"].items()}
    text = {
        **TINY_MODEL["text_config"],
        "vocab_size": 64,
        "eos_token_id": 3,
        "bos_token_id": 2,
        "pad_token_id": 0,
    }
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(
        tmp_path / "clip"
    )
    with pytest.raises(ValueError, match="conflict with init_from_clip"):
        build_model(tiny_config(world, tmp_path, init_from_clip=str(tmp_path / "clip")), tokenizer)
    from_clip = {
        "init_from_clip": str(tmp_path / "clip"),
        "model_overrides": {"prompter_config": {"hidden_size": 32}},
    }
    with pytest.raises(ValueError, match="tokens but the text tower only 64"):
        build_model(tiny_config(world, tmp_path, **from_clip), tokenizer)
    text["vocab_size"] = len(tokenizer)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    clip.save_pretrained(tmp_path / "clip2")
    from_clip["init_from_clip"] = str(tmp_path / "clip2")
    model = build_model(tiny_config(world, tmp_path, **from_clip), tokenizer)
    assert torch.equal(model.text_projection.weight, clip.text_projection.weight)


def test_load_model_weights_is_exact(world, tokenizer, tmp_path):
    config = tiny_config(world, tmp_path)
    torch.manual_seed(1)
    saved = build_model(config, tokenizer)
    saved.save_pretrained(tmp_path / "m")
    torch.manual_seed(2)
    fresh = build_model(config, tokenizer)
    load_model_weights(fresh, tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model_weights(fresh, tmp_path)
