"""A tiny checkpoint written in the original LLaVA-1.5 layout converts to a plain transformers Llava."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.convert_llava import convert_llava_checkpoint
from cloc_mllm.mllm.tiny import write_tiny_tower


def _write_llava15(root, projector_type, tune_tower=False):
    """config.json with mm_* keys, Llama + mm_projector (+ tower) weights, tokenizer: LLaVA-1.5's layout."""
    tower_dir = write_tiny_tower(root / "tower")
    tok = train_world_tokenizer(["where is the red circle"], vocab_size=300)
    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    llm = LlamaForCausalLM(llama)
    state = dict(llm.state_dict())
    if projector_type == "linear":
        state |= {
            "model.mm_projector.weight": torch.randn(64, 32),
            "model.mm_projector.bias": torch.randn(64),
        }
    else:
        state |= {"model.mm_projector.0.weight": torch.randn(64, 32), "model.mm_projector.0.bias": torch.randn(64),
                  "model.mm_projector.2.weight": torch.randn(64, 64), "model.mm_projector.2.bias": torch.randn(64)}  # fmt: skip
    if tune_tower:
        tuned = {k: v + 1.0 for k, v in CLIPVisionModel.from_pretrained(tower_dir).state_dict().items()}
        state |= {f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in tuned.items()}
    src = root / "llava-v1.5-tiny"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, src / "model.safetensors")
    config = llama.to_dict() | {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "mm_vision_tower": str(tower_dir),
        "mm_hidden_size": 32, "mm_projector_type": projector_type, "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "tune_mm_mlp_adapter": False,
        "use_mm_proj": True, "tokenizer_model_max_length": 512,
    }  # fmt: skip
    (src / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(src)
    return src, llm, state


@pytest.mark.parametrize("projector_type, tune_tower", [("mlp2x_gelu", False), ("linear", True)])
def test_converted_checkpoint_computes_what_llava15_computes(tmp_path, projector_type, tune_tower):
    src, llm, state = _write_llava15(tmp_path, projector_type, tune_tower)
    out = convert_llava_checkpoint(src, tmp_path / "hf")
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad and model.config.image_seq_length == 16

    ids = torch.tensor([[2, 50, 60, 70, 80]])
    with torch.no_grad():  # the language model is untouched (old vocabulary rows)
        assert torch.allclose(
            model(input_ids=ids).logits[..., : llm.config.vocab_size], llm(ids).logits, atol=1e-5
        )

    tower = CLIPVisionModel.from_pretrained(tmp_path / "tower")
    if tune_tower:
        tower.load_state_dict({k[len("model.vision_tower.vision_tower.vision_model.") :]: v
                               for k, v in state.items() if k.startswith("model.vision_tower.")})  # fmt: skip
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # LLaVA-1.5: layer -2 patch tokens -> mm_projector
        feats = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        if projector_type == "linear":
            expected = feats @ state["model.mm_projector.weight"].T + state["model.mm_projector.bias"]
        else:
            hidden = torch.nn.functional.gelu(
                feats @ state["model.mm_projector.0.weight"].T + state["model.mm_projector.0.bias"]
            )
            expected = hidden @ state["model.mm_projector.2.weight"].T + state["model.mm_projector.2.bias"]
        got = model.get_image_features(pixel_values=pixels).pooler_output[0]
    assert torch.allclose(got, expected[0], atol=1e-5)


def test_rejects_a_plain_llama_checkpoint(tmp_path):
    src, _, _ = _write_llava15(tmp_path, "mlp2x_gelu")
    config = json.loads((src / "config.json").read_text())
    del config["mm_vision_tower"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a LLaVA-1.5 checkpoint"):
        convert_llava_checkpoint(src, tmp_path / "hf")
