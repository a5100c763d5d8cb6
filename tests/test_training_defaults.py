"""Defaults a first run can train with: streams and workers fitted to the shards, a tokenizer found or
trained, each choice said in the log; and the one-shard command of issue 27 training as written."""

import shutil

import pytest

from cloc_mllm.training.config import PretrainConfig
from cloc_mllm.training.defaults import choose_streams, choose_tokenizer, world_tokenizer_near
from cloc_mllm.training.trainer import resolve_num_streams

from .pretrain_utils import run_train_script, tiny_world, torchrun


def _config(**values):
    return PretrainConfig(**{"train_shards": "s", "output_dir": "o", **values})


@pytest.mark.parametrize(
    "values, world, shards, expected, reduced",
    [
        ({}, 1, 1, (1, 1), True),  # one shard: one stream, one worker
        ({}, 1, 8, (2, 2), False),  # enough shards: ranks x workers, as before
        ({}, 2, 3, (2, 1), True),  # cut to a multiple of the ranks
        ({"global_batch_size": 30, "num_workers": 4}, 1, 8, (3, 3), True),  # and to a divisor of the batch
        ({"resample": True}, 1, 1, (2, 2), False),  # resampled shards: streams need not own a shard
        ({"num_streams": 1}, 1, 1, (1, 1), True),  # explicit streams kept, workers cut to them
        ({"num_workers": 0}, 1, 1, (1, 0), False),  # no worker processes stays so
    ],
)
def test_streams_and_workers_fit_the_shards(values, world, shards, expected, reduced):
    config, notes = choose_streams(_config(**values), world, shards)
    assert (config.num_streams, config.num_workers) == expected
    assert resolve_num_streams(config, world, shards) == expected[0]  # the fitted values are valid
    assert bool(notes) == reduced  # every reduction is said


def test_what_cannot_be_fitted_still_names_the_problem():
    config, _ = choose_streams(_config(), 2, 1)  # fewer shards than ranks
    with pytest.raises(ValueError, match="exceeds the 1 shard"):
        resolve_num_streams(config, 2, 1)
    config, _ = choose_streams(_config(num_streams=3), 2, 8)  # an explicit count that cannot split
    with pytest.raises(ValueError, match="multiple of the 2 rank"):
        resolve_num_streams(config, 2, 8)


def test_tokenizer_sources_in_order(tmp_path_factory, tmp_path):
    world = tiny_world(tmp_path_factory)
    urls = [str(world / "shards" / "train" / "000000.tar")]
    assert world_tokenizer_near(urls) == world / "tokenizer"
    assert (
        world_tokenizer_near(["pipe:cat x.tar"]) is None and world_tokenizer_near(["https://h/x.tar"]) is None
    )

    def choose(urls, **values):
        return choose_tokenizer(_config(**values), urls, True, lambda: None)

    assert choose(urls, tokenizer="mine")[0].tokenizer == "mine"
    assert choose(urls, init_from_clip="clipdir")[0].tokenizer == "clipdir"
    assert choose(urls)[0].tokenizer == str(world / "tokenizer")
    lone = tmp_path / "lone" / "one.tar"  # a shard with no world around it
    lone.parent.mkdir()
    shutil.copy(urls[0], lone)
    assert choose([str(lone)], preset="vit-b-16")[0].tokenizer == "openai/clip-vit-base-patch16"
    out = tmp_path / "out"
    config, how = choose([str(lone)], output_dir=str(out))
    assert config.tokenizer == str(out / "tokenizer") and how == "trained on the shards' texts"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tok.eos_token_id == 3 and len(tok) <= 1024  # the tiny preset's vocabulary, CLIP pooling id
    assert "circle" in tok.decode(tok("a red circle")["input_ids"], skip_special_tokens=True)
    assert choose([str(lone)], output_dir=str(out))[1].endswith("earlier launch of this run")
    barriers = []  # a rank that finds the tokenizer already saved still meets rank 0 at the barrier
    choose_tokenizer(_config(output_dir=str(out)), [str(lone)], False, lambda: barriers.append(1))
    assert barriers == [1]


def test_the_one_shard_command_trains_as_written(tmp_path_factory, tmp_path):
    """Issue 27: no tokenizer, one shard, default workers: trains, and the log says what it chose."""
    world = tiny_world(tmp_path_factory)
    shutil.copy(world / "shards" / "train" / "000000.tar", tmp_path / "one.tar")
    result = run_train_script(
        "--preset tiny --train-shards one.tar --output-dir out --loss cloc --max-steps 5".split(),
        cwd=tmp_path,
    )
    assert (tmp_path / "out" / "checkpoints" / "step_00000005" / "model" / "model.safetensors").is_file()
    assert "num_workers=1, not 2" in result.stderr
    assert (
        "data: 1 shard(s), 1 rank(s): num_streams=1, num_workers=1 per rank; tokenizer out/tokenizer"
        in result.stderr
    )


@pytest.mark.slow
def test_two_ranks_wait_for_the_tokenizer_rank_0_trains(tmp_path_factory, tmp_path):
    """Only rank 0 trains and saves the tokenizer; both ranks then train with it."""
    world = tiny_world(tmp_path_factory)
    shutil.copy(world / "shards" / "train" / "000000.tar", tmp_path / "one.tar")
    args = "--train-shards one.tar --output-dir out --max-steps 2 --resample --num-workers 0 --global-batch-size 8"
    result = run_train_script(args.split(), launcher=torchrun(2), cwd=tmp_path)
    assert "tokenizer out/tokenizer (trained on the shards' texts)" in result.stderr
    assert (tmp_path / "out" / "checkpoints" / "step_00000002").is_dir()
