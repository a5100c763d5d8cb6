"""The toy of the grounding lookup (experiments.tiny_llm_grounding.lookup_toy): scenes, token layout, and that it learns."""

import json
import random

import pytest

from experiments.tiny_llm_grounding.lookup_toy import (
    LookupToyConfig,
    Vocabulary,
    box_digits,
    main,
    make_batch,
    sample_scene,
    train_lookup_toy,
)


def test_box_digits_are_hundreds_of_the_0_999_edges():
    # cells 0..8 of an 8-grid: x1 = 1/8 -> 125, y1 = 0, x2 = 4/8 -> 499.9, y2 = 8/8 -> 999.9
    assert box_digits((1, 0, 4, 8), grid=8) == [1 + 1, 1 + 0, 1 + 4, 1 + 9]


def test_scene_features_mark_the_asked_object_exactly_on_its_box():
    config = LookupToyConfig(min_objects=3, max_objects=3)
    for seed in range(20):
        features, class_id, (x1, y1, x2, y2) = sample_scene(config, random.Random(seed))
        g = config.grid
        cells = features[:, class_id].reshape(g, g) > 0
        rows, cols = cells.nonzero(as_tuple=True)
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (y1, y2, x1, x2)
        assert cells.sum() == (x2 - x1) * (y2 - y1)
        # every cell carries exactly one class (or background), one row and one column
        assert (features > 0).sum(1).eq(3).all()
        classes_present = (features[:, : config.num_classes] > 0).any(0).sum()
        assert classes_present == 3


def test_questions_name_colour_and_shape_then_the_gap():
    config = LookupToyConfig(gap=3)
    vocab = Vocabulary(config)
    features, questions, answers = make_batch(config, random.Random(0), 6, gap=3)
    assert features.shape == (6, config.grid**2, config.feature_size)
    assert questions.shape == (6, 3 + 3) and answers.shape == (6, 4)
    assert (questions[:, 0] == vocab.where).all()
    assert ((questions[:, 1] >= vocab.colour0) & (questions[:, 1] < vocab.shape0)).all()
    assert ((questions[:, 2] >= vocab.shape0) & (questions[:, 2] < vocab.gap0)).all()
    assert questions[:, 3:].tolist() == [[vocab.gap0, vocab.gap0 + 1, vocab.gap0 + 2]] * 6
    assert questions.max() < config.vocab_size and answers.min() >= 1 and answers.max() <= 10


@pytest.mark.slow
def test_one_hop_lookup_is_learned_and_the_curve_is_written(tmp_path):
    """With the answer right after the words, the class-keyed lookup is learned: x1 far above picking
    one of the two objects at random (50%)."""
    out = tmp_path / "curve.json"
    scene = ["--gap", "0", "--min_objects", "2", "--max_objects", "2"]
    main(scene + ["--steps", "500", "--eval_every", "250", "--eval_size", "256", "--out", str(out)])
    curve = json.loads(out.read_text())["curve"]
    assert [point["step"] for point in curve] == [250, 500]
    assert curve[-1]["x1"] > 0.8


def test_curriculum_trains_without_the_gap_first_then_with_it(capsys):
    config = LookupToyConfig(gap=2, curriculum_steps=3, steps=4, eval_every=3, eval_size=8, hidden_size=32)
    curve = train_lookup_toy(config)
    assert [point["step"] for point in curve] == [3, 4]
    printed = capsys.readouterr().out
    assert "step 3 gap 0 " in printed and "step 4 gap 2 " in printed


@pytest.mark.parametrize(
    "bad",
    [
        dict(min_objects=3, max_objects=2),
        dict(max_objects=43),
        dict(min_objects=0),
        dict(gap=-1),
        dict(grid=2),
    ],
)
def test_impossible_settings_are_refused_with_the_field_named(bad):
    with pytest.raises(ValueError, match="LookupToyConfig"):
        LookupToyConfig(**bad)
