import pytest

from cloc_mllm.box_text import format_box, format_box_numbers, parse_boxes


def approx_boxes(boxes, abs=1e-6):
    return [pytest.approx(b, abs=abs) for b in boxes]


def test_format_box_canonical_and_clamped():
    assert format_box((0.1, 0.2, 0.5, 0.9)) == "[100, 200, 500, 899]"
    assert format_box((0.0, 0.0, 1.0, 1.0)) == "[0, 0, 999, 999]"
    assert format_box((-0.2, 0.5, 1.7, 0.5)) == "[0, 500, 999, 500]"
    with pytest.raises(ValueError, match="4 numbers"):
        format_box((0.1, 0.2, 0.3))


def test_box_numbers_are_the_box_without_brackets():
    box = (0.1, 0.2, 0.5, 0.9)
    assert (
        format_box_numbers(box) == "100, 200, 500, 899" and format_box(box) == f"[{format_box_numbers(box)}]"
    )
    assert parse_boxes(format_box_numbers(box)) == []  # not an answer the evaluation would accept


def test_round_trip_within_one_step():
    box = (0.123, 0.456, 0.789, 0.987)
    (parsed,) = parse_boxes(format_box(box))
    assert parsed == pytest.approx(box, abs=1 / 999)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[100, 200, 500, 900]", [(100 / 999, 200 / 999, 500 / 999, 900 / 999)]),  # Ferret ints
        ("It is at [0.1, 0.2, 0.5, 0.9].", [(0.1, 0.2, 0.5, 0.9)]),  # normalised floats in prose
        ("(0.1,0.2,0.5,0.9)", [(0.1, 0.2, 0.5, 0.9)]),  # parentheses, no spaces
        ("[ 1e-1 , 2E-1 , .5 , 0.9 ]", [(0.1, 0.2, 0.5, 0.9)]),  # exponents and bare decimals
        ("[500, 900, 100, 200]", [(100 / 999, 200 / 999, 500 / 999, 900 / 999)]),  # swapped corners fixed
        ("[-5, 10, 20, 30]", [(0.0, 10 / 999, 20 / 999, 30 / 999)]),  # clamped into the image
        ("[0.5, 10, 20, 30]", [(0.5 / 999, 10 / 999, 20 / 999, 30 / 999)]),  # one scale per box: the largest
        ("[0, 0, 1, 1]", [(0.0, 0.0, 1.0, 1.0)]),  # all <= 1 reads as normalised (documented ambiguity)
    ],
)
def test_parse_single_boxes(text, expected):
    assert parse_boxes(text) == approx_boxes(expected)


def test_several_boxes_in_order_and_pixel_scale():
    text = "the dog [0.1, 0.1, 0.2, 0.2] and the cat [300, 400, 500, 600] and [1200, 50, 1600, 700]"
    assert parse_boxes(text) == approx_boxes(
        [(0.1, 0.1, 0.2, 0.2), (300 / 999, 400 / 999, 500 / 999, 600 / 999)]
    )  # pixels beyond 999 cannot be read without the image size: dropped
    with_size = parse_boxes(text, image_size=(1600, 800))
    assert with_size[2] == pytest.approx((1200 / 1600, 50 / 800, 1.0, 700 / 800))
    assert len(with_size) == 3


@pytest.mark.parametrize(
    "text",
    ["", None, "no box here", "[1, 2, 3]", "[1, 2, 3, 4, 5]", "[a, b, c, d]", "1, 2, 3, 4", "[1; 2; 3; 4]"],
)
def test_unparseable_answers_give_no_box(text):
    assert parse_boxes(text) == []


def test_old_module_path_still_works_with_a_deprecation_warning():
    import importlib
    import sys

    sys.modules.pop("cloc_mllm.mllm.box_text", None)
    with pytest.warns(DeprecationWarning, match="moved to cloc_mllm.box_text"):
        old = importlib.import_module("cloc_mllm.mllm.box_text")
    assert old.parse_boxes is parse_boxes and old.format_box is format_box
