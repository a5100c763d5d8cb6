"""Ferret*: <region> tokens filled by CLOC's Prompter through a region MLP."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPVisionConfig, HfArgumentParser

from cloc_mllm import CLOCModel
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.inference import generate_answers, load_mllm
from cloc_mllm.mllm.modeling_cloc_llava import ClocLlavaForConditionalGeneration
from cloc_mllm.mllm.region_prompts import NO_BOX, boxes_to_model_frame, region_boxes_tensor
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower
from cloc_mllm.mllm.training import DataArguments, ModelArguments, TrainingArguments, train


def test_region_boxes_tensor_pads_with_no_box():
    out = region_boxes_tensor([[(0.1, 0.2, 0.3, 0.4)], [], [(0, 0, 1, 1), (0.5, 0.5, 0.6, 0.6)]])
    assert out.shape == (3, 2, 4)
    assert out[0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4]) and (out[1] == NO_BOX).all()


def test_pad_to_square_mapping_matches_the_image_processor():
    from transformers import LlavaImageProcessor

    image = np.full((20, 60, 3), 255, np.uint8)
    image[5:15, 30:45] = (255, 0, 0)  # red object at normalised (0.5, 0.25, 0.75, 0.75)
    processor = LlavaImageProcessor(do_pad=True, size={"height": 60, "width": 60}, do_center_crop=False,
                                    do_normalize=False, do_rescale=False)  # fmt: skip
    pixels = processor(Image.fromarray(image), return_tensors="np")["pixel_values"][0]
    ys, xs = np.nonzero((pixels[0] > 200) & (pixels[1] < 50))
    mapped = boxes_to_model_frame(torch.tensor([[0.5, 0.25, 0.75, 0.75]]), (60, 20), processor)[0] * 60
    assert mapped.tolist() == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1)
    processor.do_pad = False
    assert torch.equal(boxes_to_model_frame(torch.ones(1, 4), (60, 20), processor), torch.ones(1, 4))


@pytest.fixture
def cloc_parts(tiny_config, tmp_path):
    cloc = CLOCModel(tiny_config)
    cloc.save_pretrained(tmp_path / "cloc")
    tok = train_world_tokenizer(["what is in the box", "a red circle", "a blue square"], vocab_size=300)
    return cloc, str(tmp_path / "cloc"), str(write_tiny_llm(tmp_path / "llm", tok))


def test_region_model_carries_the_cloc_prompter(cloc_parts):
    cloc, cloc_dir, llm_dir = cloc_parts
    model, processor = build_llava(LlavaBuildArgs(cloc_dir, llm_dir, region_prompts=True))
    assert type(model) is ClocLlavaForConditionalGeneration and model.config.region_prompts
    for name, value in cloc.prompter.state_dict().items():
        assert torch.equal(model.model.region_encoder.prompter.state_dict()[name], value), name
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat is in [0, 0, 500, 500] <region>?"}],
        add_generation_prompt=True,
    )
    batch = processor(
        images=[Image.new("RGB", (32, 32), "red")], text=[text], add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        left = model(**batch, region_boxes=torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])).logits
        right = model(**batch, region_boxes=torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])).logits
        with pytest.raises(ValueError, match="1 region tokens in the text but 2 region features"):
            model(**batch, region_boxes=torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]]]))
    assert not torch.allclose(left[0, -1], right[0, -1])  # the box reaches the LLM through <region>


def test_padded_region_rows_leave_every_gradient_finite(cloc_parts):
    """Images with fewer boxes than the batch's most are padded with NO_BOX; nothing of those rows may
    reach the gradients (a 0/0 in the Prompter's content token once made every step's gradient NaN)."""
    _, cloc_dir, llm_dir = cloc_parts
    model, processor = build_llava(LlavaBuildArgs(cloc_dir, llm_dir, region_prompts=True))
    assert model.model.region_encoder.prompter.content_type_embedding is not None  # the path at risk
    prompts = ["what is in [0, 0, 500, 500] <region>?", "what is in [0, 0, 500, 500] <region> and <region>?"]
    texts = [
        processor.apply_chat_template([{"role": "user", "content": f"<image>\n{p}"}], add_generation_prompt=True)
        for p in prompts
    ]
    batch = processor(images=[Image.new("RGB", (32, 32), c) for c in ("red", "blue")], text=texts,
                      add_special_tokens=False, padding=True, return_tensors="pt")  # fmt: skip
    boxes = region_boxes_tensor([[(0.0, 0.0, 0.5, 0.5)], [(0.5, 0.5, 1.0, 1.0), (0.2, 0.2, 0.2, 0.2)]])
    assert (boxes[0, 1] == NO_BOX).all()  # the first image's padded row; the second has a zero-area box
    out = model(**batch, region_boxes=boxes, labels=batch["input_ids"])
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("region_encoder.projector" in n for n in grads)
    assert all(torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if not torch.isfinite(g).all()]


def test_a_batch_without_regions_still_reaches_the_region_mlp(cloc_parts):
    """Under DeepSpeed / DDP every rank's backward must produce the same gradients' set: a rank whose
    batch has no <region> once left the region MLP out, and ZeRO-2's reductions failed on size."""
    _, cloc_dir, llm_dir = cloc_parts
    model, processor = build_llava(LlavaBuildArgs(cloc_dir, llm_dir, region_prompts=True))
    model.train()
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nwhat is here?"}], add_generation_prompt=True)
    batch = processor(images=[Image.new("RGB", (32, 32), "red")], text=[text], add_special_tokens=False,
                      return_tensors="pt")  # fmt: skip
    model(**batch, labels=batch["input_ids"]).loss.backward()
    mlp = list(model.model.region_encoder.projector.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in mlp)  # reached, with zero gradient
    model.eval()
    with torch.no_grad():  # generation and evaluation do not pay for it
        calls = []
        hook = model.model.region_encoder.register_forward_hook(lambda *args: calls.append(1))
        model(**batch)
        hook.remove()
    assert not calls


def test_bare_tower_cannot_give_region_prompts(cloc_parts, tmp_path):
    _, _, llm_dir = cloc_parts
    with pytest.raises(ValueError, match="need a CLOC checkpoint"):
        build_llava(LlavaBuildArgs(str(write_tiny_tower(tmp_path / "t")), llm_dir, region_prompts=True))


def test_region_finetune_saves_and_reloads_through_auto_classes(cloc_parts, tmp_path):
    _, cloc_dir, llm_dir = cloc_parts
    for i, colour in enumerate(("red", "blue", "green", "white")):
        Image.new("RGB", (40, 32), colour).save(tmp_path / f"{i}.jpg")
    records = [
        {"id": f"r{i}", "image": f"{i}.jpg", "regions": [[0.1, 0.1, 0.5, 0.6]],
         "conversations": [{"from": "human", "value": "<image>\nwhat is in [100, 100, 500, 600] <region>?"},
                           {"from": "gpt", "value": "a red circle"}]}
        for i in range(4)
    ] + [{"id": "plain", "image": "0.jpg", "conversations": [{"from": "human", "value": "what is in the box"},
                                                               {"from": "gpt", "value": "a blue square"}]}]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    argv = ["--model_name_or_path", llm_dir, "--vision_tower", cloc_dir, "--region_prompts", "True",
            "--data_path", str(tmp_path / "data.json"), "--image_folder", str(tmp_path), "--output_dir",
            str(tmp_path / "out"), "--per_device_train_batch_size", "2", "--max_steps", "3", "--report_to", "none",
            "--save_strategy", "no", "--model_max_length", "256", "--use_cpu", "--learning_rate", "1e-3"]  # fmt: skip
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    before = build_llava(LlavaBuildArgs(cloc_dir, llm_dir, region_prompts=True))[0]
    train(*parser.parse_args_into_dataclasses(args=argv))

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert type(reloaded) is ClocLlavaForConditionalGeneration
    region_mlp = reloaded.model.region_encoder.projector.layers[0].weight
    assert not torch.equal(region_mlp, before.model.region_encoder.projector.layers[0].weight)  # trained
    prompter = reloaded.model.region_encoder.prompter.region_projection.weight
    assert torch.equal(prompter, before.model.region_encoder.prompter.region_projection.weight)  # frozen
    # the Prompter's geometry buffers are not saved: from_pretrained must rebuild them, not leave memory garbage
    buffers = dict(before.model.region_encoder.prompter.named_buffers())
    for name, value in reloaded.model.region_encoder.prompter.named_buffers():
        assert torch.equal(value, buffers[name]), name
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert "<region>" in processor.tokenizer.get_vocab()

    model, processor = load_mllm(tmp_path / "out", device="cpu")
    images = [Image.new("RGB", (40, 32), "red")] * 2
    prompts = ["what is in [100, 100, 500, 600] <region>?", "what is in <region> and <region>?"]
    regions = [[(0.1, 0.1, 0.5, 0.6)], [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]]
    answers = generate_answers(model, processor, images, prompts, max_new_tokens=4, regions=regions)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_regions_rejected_for_models_without_region_prompts(tmp_path):
    from cloc_mllm.mllm.builder import build_processor, prepare_tokenizer
    from cloc_mllm.mllm.data import LazySupervisedDataset, RecordError

    tower = write_tiny_tower(tmp_path / "t")
    tok = prepare_tokenizer(
        train_world_tokenizer(["a"], vocab_size=300), "vicuna_v1", 128, region_prompts=False
    )
    processor = build_processor(
        LlavaBuildArgs(str(tower), "unused"), tok, CLIPVisionConfig.from_pretrained(tower)
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    record = {"id": "reg1", "image": "a.jpg", "regions": [[0, 0, 1, 1]],
              "conversations": [{"from": "human", "value": "<region>?"}, {"from": "gpt", "value": "a"}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps([record]))
    with pytest.raises(
        RecordError, match="record reg1: has regions, but the model was built without region prompts"
    ):
        LazySupervisedDataset(tmp_path / "d.json", tmp_path, processor, 16)
