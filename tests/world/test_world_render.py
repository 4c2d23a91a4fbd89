"""Rendering: exact palette pixels, exact bounding boxes, expected shape areas."""

from __future__ import annotations

import numpy as np
import pytest

from unigap.world import BACKGROUND, PALETTE, Scene, SceneObject, render, render_pil


@pytest.mark.parametrize(
    "shape, fill", [("square", (1.0, 1.0)), ("circle", (0.74, 0.8)), ("triangle", (0.48, 0.55))]
)
@pytest.mark.parametrize("size, side", [("small", 13), ("large", 23)])
def test_each_shape_fills_its_box(shape, fill, size, side):
    image = render(Scene(64, (SceneObject(shape, "green", size, 30, 33),)))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    mask = (image != BACKGROUND).any(axis=-1)
    assert (image[mask] == PALETTE["green"]).all()
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (
        30 - side // 2,
        30 + side // 2,
        33 - side // 2,
        33 + side // 2,
    )
    assert fill[0] <= mask.sum() / side**2 <= fill[1]


def test_palette_is_well_separated_from_itself_and_the_background():
    colors = np.array([BACKGROUND, *PALETTE.values()], dtype=float)
    d = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    assert d[np.triu_indices(len(colors), 1)].min() > 100


def test_render_draws_each_object_where_and_as_large_as_it_says():
    scene = Scene(
        64,
        (SceneObject("triangle", "orange", "large", 20, 20), SceneObject("circle", "blue", "small", 50, 50)),
    )
    image = render(scene)  # [y, x]
    assert set(map(tuple, image.reshape(-1, 3))) == {BACKGROUND, PALETTE["orange"], PALETTE["blue"]}  # no blending
    assert tuple(image[20, 20]) == PALETTE["orange"] and tuple(image[50, 50]) == PALETTE["blue"]
    assert tuple(image[50, 44]) == PALETTE["blue"] and tuple(image[50, 43]) == BACKGROUND  # a small circle: radius 6
    assert tuple(image[0, 0]) == BACKGROUND
    assert np.array_equal(np.asarray(render_pil(scene)), image)  # (the PIL image is the same picture)
