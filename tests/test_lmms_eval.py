"""The lmms-eval plugin: registered by entry point, answering lmms-eval's RefCOCO REC prompts, and the
lmms-eval command line scoring a model exactly as ``eval/run.py`` does on the same items.

The model is a LLaVA built and saved by the project's builder, with a language model whose weights are
set by hand (no decoder layers; the head maps each token to the next one of a fixed answer), so it
answers one known box for every question: the scores are then known, not random, and fall strictly
between 0 and 1 on the synthetic world.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from lmms_eval.tasks.refcoco import utils_rec

from cloc_mllm.data.refer import load_refer
from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.eval.lmms_eval_model import ClocLlava, native_request, unit_box_text
from cloc_mllm.eval.lmms_eval_tasks import write_lmms_tasks
from tests.eval_helpers import make_world, save_tiny_cloc
from tests.test_eval_runner import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_the_entry_point_registers_the_model():
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group="lmms_eval.models")}
    assert points["cloc_llava"].value == "cloc_mllm.eval.lmms_eval_model:manifest"
    from lmms_eval.models import get_model

    assert get_model("cloc_llava") is ClocLlava


def test_rec_prompts_are_asked_as_trained_and_answered_in_the_tasks_format():
    prompt = utils_rec.refcoco_bbox_rec_doc_to_text({"answer": "the small green diamond"})
    assert native_request(prompt) == "Where is the small green diamond?"
    assert native_request("What are the locations of the cat?") is None  # other prompts: verbatim
    box = (120 / 999, 0.0, 1.0, 7 / 999)
    text = unit_box_text(box)
    assert "e" not in text and utils_rec.parse_float_sequence_within(text) == list(box)  # exact floats


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def scripted_llava(world: Path, out: Path, answer: str, tower: Path | None = None, **build) -> Path:
    """A LLaVA whose LM answers ``answer`` + EOS to any prompt, saved like a finetune; the tower is a
    tiny CLIP unless ``tower`` names another (a CLOC model), ``build`` goes to ``LlavaBuildArgs``.

    The answer's four pieces become added tokens; with no decoder layer the logits at a position depend
    on its token alone: one-hot embeddings, and a head sending every token to the first piece, each
    piece to the next, the last one to EOS."""
    from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
    from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower

    pieces = [p + ", " for p in answer[:-1].split(", ")[:-1]] + [answer.split(", ")[-1]]
    assert "".join(pieces) == answer and len(set(pieces)) == len(pieces)
    tokenizer = load_tokenizer(world / "tokenizer")
    tokenizer.add_tokens(pieces)
    width = (len(tokenizer) // 8 + 2) * 8  # room for one-hot rows after the builder adds <image>
    llm = write_tiny_llm(out / "llm", tokenizer, hidden_size=width, num_layers=0, max_positions=256)
    tower = tower or write_tiny_tower(out / "tower")
    model, processor = build_llava(LlavaBuildArgs(str(tower), str(llm), model_max_length=256, **build))
    vocab, hidden = model.lm_head.weight.shape
    ids = processor.tokenizer.convert_tokens_to_ids(pieces)
    head = torch.zeros(vocab, hidden)
    head[ids[0], :vocab] = 1.0
    for a, b in zip(ids, ids[1:] + [processor.tokenizer.eos_token_id]):
        head[:, a] = 0.0
        head[b, a] = 1.0
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out / "mllm")
    processor.save_pretrained(out / "mllm")
    return out / "mllm"


def test_task_files_follow_the_lmms_lab_schema(world, tmp_path):
    tasks = write_lmms_tasks(world / "refer", tmp_path / "tasks", ["refcoco_val", "refcocog_val"])
    assert tasks == ["cloc_world_refcoco_bbox_rec_val", "cloc_world_refcocog_bbox_rec_val"]
    yaml = (tmp_path / "tasks" / "cloc_world_refcoco_bbox_rec_val.yaml").read_text()
    assert (
        "lmms_eval/tasks/refcoco/_default_template_bbox_rec_yaml" in yaml and "load_from_disk: true" in yaml
    )
    data = datasets.load_from_disk(str(tmp_path / "tasks" / "refcoco"))["val"]
    assert set(data.column_names) == {"question_id", "image", "question", "answer", "segmentation", "bbox",
                                      "iscrowd", "file_name"}  # fmt: skip
    refs = load_refer(world / "refer", "refcoco", "unc", "val")
    assert len(data) == len(refs) and data[0]["answer"] == refs[0].sentences
    # lmms-eval's own preprocessing: GT normalised by the decoded image's size, one row per expression
    docs = utils_rec.refcoco_bbox_rec_preprocess_dataset(data)
    assert len(docs) == sum(len(r.sentences) for r in refs)
    x1, y1, x2, y2 = refs[0].box
    w, h = docs[0]["image_width"], docs[0]["image_height"]
    assert (w, h) == (refs[0].width, refs[0].height)
    assert docs[0]["bbox"] == pytest.approx([x1 / w, y1 / h, x2 / w, y2 / h], abs=1e-7)  # float32 column


def test_lmms_eval_command_line_agrees_with_eval_run(world, tmp_path, monkeypatch):
    # the answer: the second val object's box, so that object's expressions hit and most others miss
    ref = load_refer(world / "refer", "refcoco", "unc", "val")[1]
    norm = [ref.box[0] / ref.width, ref.box[1] / ref.height, ref.box[2] / ref.width, ref.box[3] / ref.height]
    answer = "[" + ", ".join(str(round(v * 999)) for v in norm) + "]"
    mllm = scripted_llava(world, tmp_path / "llava", answer)

    run_cli("eval/run.py", ["--suite", "grounding", "--model", str(mllm), "--data-root", str(world),
                            "--out", str(tmp_path / "ours"), "--benchmarks", "refcoco_val",
                            "--max-new-tokens", "16"], monkeypatch)  # fmt: skip
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())["grounding"]["refcoco_val"]

    write_lmms_tasks(world / "refer", tmp_path / "tasks", ["refcoco_val"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "cloc_llava",
           "--model_args", f"pretrained={mllm},device=cpu,max_new_tokens=16",
           "--tasks", "cloc_world_refcoco_bbox_rec_val", "--include_path", str(tmp_path / "tasks"),
           "--batch_size", "4", "--output_path", str(tmp_path / "lmms"), "--log_samples"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results_file] = list((tmp_path / "lmms").rglob("*_results.json"))
    theirs = json.loads(results_file.read_text())["results"]["cloc_world_refcoco_bbox_rec_val"]

    n = ours["counts"]["scored"]
    assert n == ours["counts"]["items"] > 3
    assert 0 < ours["any"]["acc@0.5"] < 1  # neither all hits nor all misses: the numbers mean something
    assert theirs["refcoco_ACC@0.5,none"] == pytest.approx(ours["any"]["acc@0.5"], abs=1e-12)
    assert theirs["refcoco_IoU,none"] == pytest.approx(ours["any"]["mean_iou"], abs=1e-6)  # float32 GT
    [samples_file] = list((tmp_path / "lmms").rglob("*_samples_*.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == n and {s["filtered_resps"] for s in samples} == {
        unit_box_text([round(v * 999) / 999 for v in norm])
    }


def test_a_cloc_tower_llava_answers_rec_and_ferret_prompts_in_process(world, tmp_path):
    """A cloc_llava (CLOC tower + Prompter region encoder) through the plugin's own generate_until."""
    from lmms_eval.api.instance import Instance

    tower = save_tiny_cloc(world, tmp_path / "cloc")
    mllm = scripted_llava(world, tmp_path / "llava", "[120, 80, 700, 650]", tower, region_prompts=True)
    assert json.loads((mllm / "config.json").read_text())["model_type"] == "cloc_llava"
    lm = ClocLlava(pretrained=str(mllm), device="cpu", batch_size=2)
    docs = utils_rec.refcoco_bbox_rec_preprocess_dataset(
        write_and_load(world, tmp_path / "tasks", "refcoco_val", "refcoco", "val")
    )
    lm.task_dict = {"t": {"val": docs}}
    prompts = [utils_rec.refcoco_bbox_rec_doc_to_text(docs[0]), "What are the locations of the circle?"]
    gen = [{"until": ["ASSISTANT:"]}, {"until": ["700"], "max_new_tokens": 8}]
    requests = [
        Instance("generate_until", (p, g, utils_rec.refcoco_bbox_rec_doc_to_visual, 0, "t", "val"), i,
                 {"task": "t", "doc_id": 0, "repeats": 1})
        for i, (p, g) in enumerate(zip(prompts, gen))
    ]  # fmt: skip
    rec, ferret = lm.generate_until(requests)
    assert rec == unit_box_text([120 / 999, 80 / 999, 700 / 999, 650 / 999])  # the task's 0-1 floats
    assert ferret == "[120, 80, "  # verbatim 0-999 answer, cut at the request's stop string


def write_and_load(world: Path, out: Path, benchmark: str, dataset: str, split: str):
    write_lmms_tasks(world / "refer", out, [benchmark])
    return datasets.load_from_disk(str(out / dataset))[split]
