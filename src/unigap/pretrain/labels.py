"""Per-patch ground truth: which object covers each image patch. Stage 2 trains the vision tower on it,
and the joint stage trains the LLM's image-position states on it (`joint.PatchHead`)."""

from __future__ import annotations

import numpy as np

from unigap.world import COLORS, SHAPES, SIZES, Scene

ATTRIBUTES = (SHAPES, COLORS, SIZES)  # label rows, in this order; class 0 is background


def grid_side(num_image_tokens: int) -> int:
    """Side of the square grid of `num_image_tokens` patches (8 for Janus's 64 tiny-model tokens)."""
    side = int(round(num_image_tokens**0.5))
    if side * side != num_image_tokens:
        raise ValueError(f"{num_image_tokens} image tokens do not form a square grid")
    return side


def patch_labels(scene: Scene, grid: int) -> np.ndarray:
    """[3, grid·grid] int64: per patch (row-major, as the tower orders them) the shape, colour and size
    index + 1 of the object whose bounding box holds the patch centre; 0 where none does."""
    cell = scene.canvas / grid
    centres = (np.arange(grid) + 0.5) * cell - 0.5  # pixel coordinates of the patch centres
    labels = np.zeros((len(ATTRIBUTES), grid, grid), dtype=np.int64)
    for obj in scene.objects:
        reach = scene.geometry.radius(obj.size) + 0.5
        rows = np.abs(centres - obj.y) <= reach
        cols = np.abs(centres - obj.x) <= reach
        inside = rows[:, None] & cols[None, :]
        for k, (values, value) in enumerate(zip(ATTRIBUTES, (obj.shape, obj.color, obj.size), strict=True)):
            labels[k][inside] = values.index(value) + 1
    return labels.reshape(len(ATTRIBUTES), -1)
