"""The exact generation verifier: parse any RGB image into objects, then apply the prompt semantics.

Why: this is the independent judge of the toolkit, so it must agree with the ground truth on rendered
scenes and stay right on imperfect pictures (noise, blur, JPEG, VQ reconstruction, model samples).

Pipeline:
1. Foreground = pixels nearer to some palette colour than to the background, holes filled; its
   8-connected components under `min_area` are dropped (noise specks). Objects are >= 3 px apart, so each
   component is one object in a rendered scene.
2. Colour of a component: majority vote of its *confident* pixels (within `MAX_COLOR_DIST` of a palette
   colour); blended edge pixels do not vote. Several strong colours (touching objects in a generated
   image) split the component by nearest colour.
3. Per object: size from the bounding-box side (threshold halfway between small and large),
   centre = bounding-box centre (the scene's definition of position), and shape from two features:
   fill = area / bbox area (square 1, circle pi/4, triangle 1/2) and top-heaviness = (mass in the bottom
   half - mass in the top half) / area (triangle ~0.5, others ~0), by the threshold rules below. A blob
   outside every rule (too sparse, bottom-heavy, or much longer than wide) is shape "unknown" and
   matches no prompt item.
4. `unigap.world.prompts.check` decides, the same function the ground truth uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from unigap.errors import UserError
from unigap.pixels import UNREADABLE_IMAGE, rgb_pixels
from unigap.world.prompts import PromptSpec, check
from unigap.world.render import BACKGROUND, PALETTE
from unigap.world.scene import DEFAULT_CANVAS, Geometry

MAX_COLOR_DIST = 75.0
# Components smaller than this fraction of a small object's box are specks, not objects (a small
# triangle covers ~0.5 of its box, ~0.4 after heavy blur).
MIN_AREA_FRACTION = 0.15
# Shape rules on (fill, top-heaviness). Rendered values: square (1.0, 0), circle (0.76-0.78, 0),
# triangle (0.5, 0.5). Under blur radius 1.5 / JPEG quality 30 they stay within: square fill >= 0.85,
# circle fill 0.70-0.83 and |heaviness| <= 0.09, triangle heaviness >= 0.2 and fill <= 0.81.
TRIANGLE_MIN_HEAVINESS = 0.15
TRIANGLE_FILL = (0.4, 0.85)
SQUARE_MIN_FILL = 0.87
CIRCLE_MIN_FILL = 0.62
MAX_ASPECT = 1.4
EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: objects are >= 3 px apart, so it never merges two


@dataclass(frozen=True)
class Detected:
    """One object found in an image; `shape` may be 'unknown'. Positions in pixels, like `SceneObject`."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    area: int
    fill: float
    top_heaviness: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "x": self.x,
            "y": self.y,
            "area": self.area,
            "fill": round(self.fill, 3),
            "top_heaviness": round(self.top_heaviness, 3),
        }


@dataclass(frozen=True)
class Verdict:
    """Whether the image satisfies the prompt, why (or why not), and what was seen."""

    satisfied: bool
    reason: str
    objects: list[Detected] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "satisfied": self.satisfied,
            "reason": self.reason,
            "objects": [o.to_dict() for o in self.objects],
        }


def as_rgb_array(image: np.ndarray | Image.Image | str | Path, canvas: int = DEFAULT_CANVAS) -> np.ndarray:
    """uint8 HxWx3 array of a PIL image, an array or an image file's path (a string read as an array had no
    shape); `UserError` unless it is canvas x canvas RGB."""
    if isinstance(image, str | Path):
        return as_rgb_array(load_image(image), canvas)
    array = rgb_pixels(image) if isinstance(image, Image.Image) else np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UserError(
            f"expected an RGB image of shape ({canvas}, {canvas}, 3), got array shape {array.shape}"
        )
    if array.shape[:2] != (canvas, canvas):
        h, w = array.shape[:2]
        raise UserError(f"expected a {canvas}x{canvas} image, got {w}x{h}")
    if array.dtype != np.uint8:
        raise UserError(f"expected a uint8 image (0-255), got dtype {array.dtype}")
    return array


def _color_distances(array: np.ndarray) -> np.ndarray:
    """HxWx7 RGB distances of every pixel to [background, *palette] (expanded square, one matmul)."""
    refs = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)
    flat = array.reshape(-1, 3).astype(np.float32)
    sq = (flat * flat).sum(axis=1, keepdims=True) - 2 * flat @ refs.T + (refs * refs).sum(axis=1)
    return np.sqrt(np.maximum(sq, 0)).reshape(*array.shape[:2], len(refs))


def _color_parts(dist: np.ndarray, component: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """(palette index, mask) objects inside one foreground component.

    A colour counts if enough of the component's *confident* pixels (within MAX_COLOR_DIST of their
    nearest colour) vote for it, so blended edge pixels do not vote. With one counted colour the whole
    component is one object; with several (touching objects in a generated image) each pixel goes to
    the closest counted colour and each colour's pieces are objects of their own.
    """
    d = dist[component]
    nearest = d.argmin(axis=1)
    confident = d.min(axis=1) <= MAX_COLOR_DIST
    votes = np.bincount(nearest[confident], minlength=len(PALETTE) + 1)[1:]
    counted = [int(i) + 1 for i in np.flatnonzero(votes >= max(min_area, 0.2 * component.sum()))]
    if len(counted) <= 1:
        return [(c - 1, component) for c in counted]
    owner = np.full(component.shape, -1)
    owner[component] = np.array(counted)[d[:, counted].argmin(axis=1)]
    parts = []
    for c in counted:
        pieces, n = ndimage.label(owner == c, structure=EIGHT)
        parts += [(c - 1, pieces == k) for k in range(1, n + 1) if (pieces == k).sum() >= min_area]
    return parts


def _classify_shape(crop: np.ndarray) -> tuple[str, float, float]:
    """Shape name (or 'unknown'), fill ratio and top-heaviness of an object mask cropped to its bbox."""
    h, w = crop.shape
    area = float(crop.sum())
    fill = area / (h * w)
    rows = crop.sum(axis=1).astype(np.float64)
    heaviness = float(rows[(h + 1) // 2 :].sum() - rows[: h // 2].sum()) / area
    if max(h, w) > MAX_ASPECT * min(h, w):
        return "unknown", fill, heaviness
    if heaviness >= TRIANGLE_MIN_HEAVINESS:
        shape = "triangle" if TRIANGLE_FILL[0] <= fill <= TRIANGLE_FILL[1] else "unknown"
    elif heaviness <= -TRIANGLE_MIN_HEAVINESS:
        shape = "unknown"  # bottom-light: an upside-down triangle is no ShapeWorld shape
    elif fill >= SQUARE_MIN_FILL:
        shape = "square"
    else:
        shape = "circle" if fill >= CIRCLE_MIN_FILL else "unknown"
    return shape, fill, heaviness


def shape_of(crop: np.ndarray) -> str:
    """The shape name (or "unknown") of a boolean object mask cropped to its bounding box, by the rules above."""
    return _classify_shape(crop)[0]


def detect(image: np.ndarray | Image.Image | str | Path, canvas: int = DEFAULT_CANVAS) -> list[Detected]:
    """All palette-coloured objects in the image (or the image file a path names), sorted left-to-right like scene
    objects."""
    geo = Geometry.for_canvas(canvas)
    dist = _color_distances(as_rgb_array(image, canvas))
    min_area = round(MIN_AREA_FRACTION * (2 * geo.radius_small + 1) ** 2)
    foreground = ndimage.binary_fill_holes(dist.argmin(axis=-1) > 0)
    components, n = ndimage.label(foreground, structure=EIGHT)
    found = []
    for k in range(1, n + 1):
        component = components == k
        if component.sum() >= min_area:
            found += [_describe(color, mask, geo) for color, mask in _color_parts(dist, component, min_area)]
    return sorted(found, key=lambda d: (d.x, d.y, d.shape, d.color))


def _describe(color: int, mask: np.ndarray, geo: Geometry) -> Detected:
    """Measure one object mask: bbox centre and side, area, and shape features."""
    ys, xs = ndimage.find_objects(mask.astype(np.int32))[0]
    crop = mask[ys, xs]
    shape, fill, heaviness = _classify_shape(crop)
    side = max(crop.shape)
    return Detected(
        shape=shape,
        color=list(PALETTE)[color],
        size="small" if side < geo.size_threshold() else "large",
        x=(xs.start + xs.stop - 1) / 2,
        y=(ys.start + ys.stop - 1) / 2,
        area=int(crop.sum()),
        fill=fill,
        top_heaviness=heaviness,
    )


def verify(image: np.ndarray | Image.Image | str | Path, spec: PromptSpec | str,
           canvas: int = DEFAULT_CANVAS) -> Verdict:
    """Judge an image (or an image file's path) against a prompt spec (or a ShapeWorld prompt's text, which `check`
    reads) with exactly the ground-truth semantics."""
    objects = detect(image, canvas)
    satisfied, reason = check(objects, spec, Geometry.for_canvas(canvas).margin)
    return Verdict(satisfied, reason, objects)


def load_image(path: str | Path) -> np.ndarray:
    """An image file as a uint8 RGB array; `UserError` if it is missing or not an image."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} is a directory, not an image file" if p.is_dir() else f"image file not found: {p}")
    try:
        with Image.open(p) as image:
            return rgb_pixels(image)
    except UNREADABLE_IMAGE as exc:
        raise UserError(f"cannot read {p} as an image: {exc}") from None
