"""The synthetic world's language: referring expressions are true, unique, and say what they mean."""

import numpy as np
import pytest

from cloc_mllm.data.synthetic_scene import Scene, SceneObject, SyntheticWorldConfig, image_rng, sample_scene
from cloc_mllm.data.synthetic_text import (
    Description,
    RefExpression,
    caption_segments,
    choose_expressions,
    denotes,
    expression_segments,
    join_segments,
    landmark_index,
    parse_expression,
    referring_expressions,
    resolve,
)


def _obj(colour, shape, size, box):
    return SceneObject(shape, colour, size, 0.0, 0.0, 0.0, box, [], 1, (0, 0, 0))


@pytest.fixture
def scene():
    """Two red circles (left small, right large), a blue square between them at the bottom."""
    return Scene(
        100,
        100,
        "plain",
        [
            _obj("red", "circle", "small", (5, 10, 25, 30)),
            _obj("red", "circle", "large", (70, 10, 95, 35)),
            _obj("blue", "square", "small", (40, 70, 60, 90)),
        ],
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the red circle", [0, 1]),  # ambiguous: two objects
        ("the red circle on the left", [0]),
        ("the red circle on the right", [1]),
        ("the large red circle", [1]),
        ("the red circle at the bottom", []),  # neither is lower than the other by the margin
        ("the blue square", [2]),
        ("the blue square at the bottom", [2]),
        ("the blue square at the top", []),  # false
        ("the red circle left of the blue square", [0]),
        ("a red circle that is to the right of the blue square", [1]),
        ("the red circle below the blue square", []),  # false
        ("the blue square below the red circle", []),  # landmark not unique
        ("the small red circle located on the left side of the image", [0]),
        ("a blue square shown in the image", [2]),
        ("the green circle", []),
        ("some nonsense", []),
    ],
)
def test_resolve_reads_the_scene(scene, text, expected):
    assert resolve(text, scene) == expected


def test_parse_round_trips_every_rendering(scene):
    rng = np.random.default_rng(0)
    for target in range(3):
        for expr in referring_expressions(scene, target):
            for style in ("short", "long"):
                words = join_segments(
                    expression_segments(expr, target, landmark_index(scene, expr), style, rng)
                )
                parsed = parse_expression(words)
                assert parsed is not None, words
                assert denotes(scene, parsed) == [target], words


def test_referring_expressions_are_true_and_unique_on_generated_scenes():
    cfg = SyntheticWorldConfig(duplicate=0.5, distractor=0.5, max_objects=6)
    kinds = set()
    for index in range(60):
        rng = image_rng(3, "train", index)
        scene = sample_scene(cfg, rng)
        for target in range(len(scene.objects)):
            for allow_location in (True, False):
                exprs = referring_expressions(scene, target, allow_location)
                for expr in choose_expressions(exprs, 3, rng):
                    kinds.add(expr.kind)
                    text = join_segments(
                        expression_segments(expr, target, landmark_index(scene, expr), "short", rng)
                    )
                    assert resolve(text, scene) == [target], (index, target, text)
                    if not allow_location:
                        assert not {"left", "right", "top", "bottom", "above", "below"} & set(text.split())
    assert kinds == {"plain", "size", "position", "relation"}


def test_ambiguous_target_gets_no_expression(scene):
    twin = Scene(100, 100, "plain", [scene.objects[0], _obj("red", "circle", "small", (8, 60, 28, 80))])
    # Same size, and 0.3 apart only vertically: "top"/"bottom" work, appearance alone does not.
    assert referring_expressions(twin, 0, allow_location=False) == []
    assert {e.position for e in referring_expressions(twin, 0)} == {"top"}


def test_caption_mentions_every_object_once():
    cfg = SyntheticWorldConfig(duplicate=0.6)
    for index in range(20):
        rng = image_rng(0, "val", index)
        scene = sample_scene(cfg, rng)
        phrases = [o.category for o in scene.objects]
        segments = caption_segments(scene, phrases, rng)
        mentioned = sorted(i for seg in segments if not isinstance(seg, str) for i in seg.objects)
        assert mentioned == list(range(len(scene.objects)))
        assert join_segments(segments).endswith(f"{scene.background} background")


def test_relation_expression_names_its_landmark(scene):
    expr = RefExpression(
        Description("red", "circle"), relation="left of", landmark=Description("blue", "square")
    )
    assert landmark_index(scene, expr) == 2
    with pytest.raises(ValueError, match="style"):
        expression_segments(expr, 0, 2, "poetic", np.random.default_rng(0))
