"""Rendering scenes with PIL, without anti-aliasing, so every object pixel is exactly its palette colour.

The palette is chosen for separability, not beauty: every pair of palette colours (and the background) is
> 110 apart in RGB, so nearest-colour classification survives noise, blur, JPEG and VQ reconstruction.
The background is white rather than light grey because JPEG keeps luminance at full resolution but
halves chroma: yellow differs from a light grey almost only in chroma, from white also in luminance.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

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


def render_pil(scene: Scene) -> Image.Image:
    """The scene as a PIL RGB image (background first, then objects; they never overlap)."""
    geo = scene.geometry
    image = Image.new("RGB", (scene.canvas, scene.canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        kind, points = shape_outline(obj, geo.radius(obj.size))
        getattr(draw, kind)(points, fill=PALETTE[obj.color])
    return image


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 RGB array of shape (canvas, canvas, 3)."""
    return np.asarray(render_pil(scene), dtype=np.uint8).copy()
