"""Boxes and labels land where they should; grids tile images."""

import pytest
from PIL import Image

from cloc_mllm.visualize import draw_boxes, image_grid


def test_draw_boxes_outlines_pixel_and_normalised_boxes():
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    out = draw_boxes(image, [[10, 10, 40, 30]], ["red circle"], colours=[(255, 0, 0)], width=1)
    assert out.getpixel((10, 20)) == (255, 0, 0) and out.getpixel((39, 20)) == (255, 0, 0)
    assert out.getpixel((25, 20)) == (255, 255, 255)  # inside stays clear
    assert image.getpixel((10, 20)) == (255, 255, 255)  # the input is not modified
    same = draw_boxes(
        image, [[0.1, 0.2, 0.4, 0.6]], ["red circle"], colours=[(255, 0, 0)], normalized=True, width=1
    )
    assert same.tobytes() == out.tobytes()
    with pytest.raises(ValueError, match="labels"):
        draw_boxes(image, [[0, 0, 1, 1]], ["a", "b"])


def test_image_grid_tiles_row_by_row():
    images = [Image.new("RGB", (20, 10), (i * 40, 0, 0)) for i in range(5)]
    grid = image_grid(images, columns=2, pad=2)
    assert grid.size == (2 * 22 + 2, 3 * 12 + 2)
    assert grid.getpixel((2 + 22, 2 + 12)) == (120, 0, 0)  # the 4th image: row 1, column 1
