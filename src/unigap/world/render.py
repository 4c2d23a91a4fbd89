"""Rendering scenes with PIL, without anti-aliasing, so every object pixel is exactly its palette colour; and the
scene's exact auxiliary maps (UniMRG's targets): a segmentation map and a depth-like map.

The palette is chosen for separability, not beauty: every pair of palette colours (and the background) is
> 110 apart in RGB, so nearest-colour classification survives noise, blur, JPEG and VQ reconstruction.
The background is white rather than light grey because JPEG keeps luminance at full resolution but
halves chroma: yellow differs from a light grey almost only in chroma, from white also in luminance.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from collections.abc import Callable

from unigap.world.scene import Scene, SceneObject

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 20, 20),
    "green": (40, 170, 40),
    "blue": (25, 75, 225),
    "yellow": (250, 230, 0),
    "purple": (145, 40, 190),
    "orange": (245, 120, 0),
}


def shape_outline(obj: SceneObject, radius: int) -> tuple[str, list[tuple[int, int]]]:
    """PIL primitive and vertices for one object; each shape exactly fills its (2r+1)-px bounding box."""
    x0, y0, x1, y1 = obj.x - radius, obj.y - radius, obj.x + radius, obj.y + radius
    if obj.shape == "circle":
        return "ellipse", [(x0, y0), (x1, y1)]
    if obj.shape == "square":
        return "rectangle", [(x0, y0), (x1, y1)]
    return "polygon", [(obj.x, y0), (x1, y1), (x0, y1)]  # triangle: apex up, flat base


def _paint(scene: Scene, background: tuple[int, int, int], fill: Callable[[SceneObject], tuple[int, int, int]]) -> Image.Image:
    """Background first, then every object's exact mask in its `fill` colour (objects never overlap)."""
    geo = scene.geometry
    image = Image.new("RGB", (scene.canvas, scene.canvas), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        kind, points = shape_outline(obj, geo.radius(obj.size))
        getattr(draw, kind)(points, fill=fill(obj))
    return image


def render_pil(scene: Scene) -> Image.Image:
    """The scene as a PIL RGB image."""
    return _paint(scene, BACKGROUND, lambda obj: PALETTE[obj.color])


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 RGB array of shape (canvas, canvas, 3)."""
    return np.asarray(render_pil(scene), dtype=np.uint8).copy()


# The maps are drawn in the renders' own colours on their white background: a VQ trained on renders (the embedded
# model's) encodes nothing else faithfully. On a black background its reconstructions of the maps are noise
# (`benchmarks/map_fidelity.py`), so their tokens would be targets no decoder can draw.
SEGMENT_COLORS: dict[str, str] = {"circle": "red", "square": "green", "triangle": "blue"}  # one per shape class
DEPTH_COLORS: tuple[str, ...] = ("blue", "purple", "red", "orange", "yellow")  # far -> near, a heat-map scale


def render_segmentation(scene: Scene) -> np.ndarray:
    """The segmentation map: each object's pixels in its shape class's colour (`SEGMENT_COLORS`), whatever the
    object's own colour, on the background; uint8 (canvas, canvas, 3)."""
    return np.asarray(_paint(scene, BACKGROUND, lambda obj: PALETTE[SEGMENT_COLORS[obj.shape]]), dtype=np.uint8).copy()


def depth_band(obj: SceneObject, canvas: int) -> int:
    """The depth band of `obj`, 0 (farthest) to len(DEPTH_COLORS) - 1 (nearest): the canvas read as a ground plane
    seen from the front, so the lower an object's centre, the nearer it stands (equal bands of y)."""
    return min(len(DEPTH_COLORS) - 1, obj.y * len(DEPTH_COLORS) // canvas)


def render_depth(scene: Scene) -> np.ndarray:
    """The depth-like map: each object's mask coloured by its `depth_band` (`DEPTH_COLORS`, far blue to near
    yellow) on the background; uint8 (canvas, canvas, 3). ShapeWorld's objects never overlap, so the depth a flat
    scene has is where each object stands on the ground plane: this map turns "above"/"below" into colour."""
    return np.asarray(
        _paint(scene, BACKGROUND, lambda obj: PALETTE[DEPTH_COLORS[depth_band(obj, scene.canvas)]]), dtype=np.uint8
    ).copy()
