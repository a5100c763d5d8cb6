import json

import pytest

from cloc_mllm.training.config import PretrainConfig, parse_args

REQUIRED = ["--train-shards", "s/{0..1}.tar", "--tokenizer", "tok", "--output-dir", "out"]


def test_defaults_are_the_paper_recipe():
    c = PretrainConfig()
    assert (c.adam_beta1, c.adam_beta2, c.weight_decay, c.lr, c.warmup_steps) == (0.9, 0.98, 0.2, 5e-4, 2000)
    assert c.loss == "cloc" and c.region_head == "prompter" and c.max_regions == 4


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    PretrainConfig(lr=1e-3, max_steps=50, model_overrides={"projection_dim": 16}).save(path)
    c = parse_args(["--config", str(path), *REQUIRED, "--max-steps", "7", "--loss", "clip", "--resample"])
    assert c.lr == 1e-3  # from the file
    assert c.max_steps == 7 and c.loss == "clip" and c.resample is True  # from the flags
    assert c.model_overrides == {"projection_dim": 16}
    assert c.train_shards == "s/{0..1}.tar"


def test_flag_forms_and_json(tmp_path):
    c = parse_args(
        [
            *REQUIRED,
            "--export_vision_tower",
            "false",
            "--model-overrides",
            '{"vision_config": {"image_size": 32}}',
        ]
    )
    assert c.export_vision_tower is False
    assert c.model_overrides == {"vision_config": {"image_size": 32}}
    # The deepspeed launcher's --local_rank is accepted and ignored.
    assert parse_args([*REQUIRED, "--local_rank=1"]).output_dir == "out"


def test_json_file_and_round_trip(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train_shards": "a", "tokenizer": "t", "output_dir": "o", "seed": 3}))
    c = PretrainConfig.from_file(path)
    assert c.seed == 3
    saved = tmp_path / "saved.yaml"
    c.save(saved)
    assert PretrainConfig.from_file(saved) == c


def test_bad_configs_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        PretrainConfig.from_file(path)
    with pytest.raises(ValueError, match="train_shards"):
        PretrainConfig().validate()
    with pytest.raises(SystemExit):
        parse_args([*REQUIRED, "--loss", "siglip"])
    with pytest.raises(ValueError, match="eval_coco"):
        parse_args([*REQUIRED, "--eval-every", "5"])


def test_changed_fields_ignore_runtime_settings():
    a = PretrainConfig(lr=1e-3, num_workers=2, output_dir="x")
    b = PretrainConfig(lr=2e-3, num_workers=8, output_dir="y", resume="auto")
    assert a.changed_fields(b) == {"lr": (2e-3, 1e-3)}
