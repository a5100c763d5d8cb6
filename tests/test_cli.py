"""The installed ``cloc-mllm`` command: every subcommand answers --help with its script's parser."""

import shutil
import subprocess

import pytest

from cloc_mllm.cli import COMMANDS, main

SCRIPT = shutil.which("cloc-mllm")


def test_installed_script_lists_the_subcommands():
    assert SCRIPT is not None, "the console script is missing: scripts/setup.sh installs it (pip install -e .)"
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize(
    ("name", "flag"),
    [("pipeline", "--llm"), ("make-synthetic", "--num_train"), ("pretrain", "--train-shards"),
     ("vesl", "--detector"), ("finetune", "--llm_num_layers"), ("eval", "--suite"), ("chat", "--prompt"),
     ("export-llm", "--num_layers")],
)  # fmt: skip
def test_each_subcommand_has_its_scripts_flags(name, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert flag in out and f"cloc-mllm {name}" in out


def test_unknown_command_is_named(capsys):
    assert main(["pretrian"]) == 2
    assert "unknown command 'pretrian'" in capsys.readouterr().err
