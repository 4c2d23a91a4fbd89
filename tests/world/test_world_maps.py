"""The auxiliary maps UniMRG trains on: exact masks, one colour per shape class, depth bands by ground-plane row."""

from __future__ import annotations

import numpy as np

from unigap.world import (
    BACKGROUND,
    DEPTH_COLORS,
    PALETTE,
    SEGMENT_COLORS,
    SHAPES,
    Scene,
    SceneObject,
    depth_band,
    random_train_scenes,
    render,
    render_depth,
    render_segmentation,
)


def _mask(image: np.ndarray) -> np.ndarray:
    return ~(image == np.array(BACKGROUND)).all(-1)


def test_maps_share_the_renders_masks_and_colour_each_object_by_its_class_or_band() -> None:
    for scene in random_train_scenes(40, 0, draw=7):
        image, seg, depth = render(scene), render_segmentation(scene), render_depth(scene)
        assert (_mask(seg) == _mask(image)).all() and (_mask(depth) == _mask(image)).all()
        for obj in scene.objects:
            at = (obj.y, obj.x)  # every shape covers its box centre
            assert tuple(seg[at]) == PALETTE[SEGMENT_COLORS[obj.shape]]
            assert tuple(depth[at]) == PALETTE[DEPTH_COLORS[depth_band(obj, scene.canvas)]]


def test_segmentation_ignores_object_colour_and_depth_grows_towards_the_bottom() -> None:
    assert set(SEGMENT_COLORS) == set(SHAPES) and len(set(SEGMENT_COLORS.values())) == len(SHAPES)
    red, blue = (Scene(64, (SceneObject("circle", c, "small", 20, 20),)) for c in ("red", "blue"))
    assert (render_segmentation(red) == render_segmentation(blue)).all()
    assert not (render(red) == render(blue)).all()
    bands = [depth_band(SceneObject("square", "red", "small", 32, y), 64) for y in range(6, 58)]
    assert bands == sorted(bands) and bands[0] == 0 and bands[-1] == len(DEPTH_COLORS) - 1


def test_random_train_scenes_draws_are_seeded_and_differ_from_pretraining() -> None:
    assert random_train_scenes(20, 0, draw=4) == random_train_scenes(20, 0, draw=4)
    assert random_train_scenes(20, 0, draw=4) != random_train_scenes(20, 0)
