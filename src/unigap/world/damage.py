"""Damaged pictures: rendered scenes with the failures generated images show, and the rule that labels them.

Why: a judge that should reject a model's broken images must see broken images with a right answer. The
model's own images cannot supply them (labelling those by the verifier would train the judge on the
independent judge's verdicts), so the world draws the damage itself, on scenes whose truth it knows.

Kinds (each damages one object of the scene, or adds clutter):

=============  ==========================================================  ================================
kind           drawn                                                       the rule's objects
=============  ==========================================================  ================================
``warped``     the object's outline jittered (smoothly, up to ~30 % of     one object of the shape its drawn
               its radius) and squashed up to 25 % along one axis;         mask has by the world's shape
               `warp_scene` warps every object of a scene                  definition (`verify.shape_of`:
                                                                           fill and top-heaviness), which
                                                                           may still be its own
``malformed``  the object as no ShapeWorld shape: stretched 1.8x along     one object of unknown shape
               one axis, a triangle pointing down, a plus sign, or an
               irregular blob
``cut``        40-55 % of its box (left, right, top or bottom; a          one object of unknown shape
               triangle is never cut from below) painted over
``edge``       moved so that 35-60 % of its box lies beyond the canvas    one object of unknown shape
               (a triangle never beyond the bottom)
``merged``     a same-colour, same-size twin overlapping it along one     one object of unknown shape (the
               axis, the two one blob (8-connected) at least 1.4x longer  two count as one)
               than wide
``occluded``   an object of another colour drawn over so much of it that  the hidden one of unknown shape,
               what shows is no shape, yet at least SPECK_AREA pixels      the one on top as it is
``speck``      one or two small irregular specks of palette colours       one object of unknown shape each
``extra``      one more intact object at a free position                  an object like any other
=============  ==========================================================  ================================

An object of unknown shape matches no prompt item and no shape reference, but counts as an object (a
fifth one makes any picture clutter). The truth of a prompt is `check` on the rule's objects, the same
function the ground truth and the verifier use. Damage is only drawn where it keeps the world's gap to
every other object, so it never touches a third one. `benchmarks/damage_agreement.py` measures how often
the verifier's reading of a damaged render agrees with the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from unigap.errors import UserError
from unigap.world.edits import UNKNOWN, Thing, things
from unigap.world.prompts import PromptSpec, check
from unigap.world.render import BACKGROUND, PALETTE, render_pil, shape_outline
from unigap.world.scene import (
    COLORS,
    DEFAULT_CANVAS,
    Geometry,
    Scene,
    SceneObject,
    as_generator,
    place_object,
    random_kind,
)
from unigap.world.verify import EIGHT, shape_of

DAMAGE_KINDS: tuple[str, ...] = ("warped", "malformed", "cut", "edge", "merged", "occluded", "speck", "extra")
MALFORMATIONS: tuple[str, ...] = ("stretch", "invert", "plus", "blob")
CUT_SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
STRETCH = 1.8
CUT_FRACTION = (0.40, 0.55)  # share of the box painted over
EDGE_FRACTION = (0.35, 0.60)  # share of the box beyond the canvas
MERGE_OFFSET = (0.75, 0.95)  # a merged twin's centre offset, in box sides
OCCLUDE_OFFSET = (0.35, 0.55)  # an occluding object's centre offset, in box sides
PLUS_BAR = 4  # a plus sign's bars are a quarter of the box wide (area ~0.44 of the box: no shape's)
SPECK_RADIUS = (4, 5)  # px on a 64-px canvas: specks are just above the verifier's smallest object (SPECK_AREA)
SPECK_AREA = 30  # px on a 64-px canvas: at least this many, above the verifier's 25-px floor for an object
WARP_NOISE = (0.04, 0.16)  # std of a warped outline's radial jitter, in radii, before smoothing
WARP_SQUASH = (0.75, 1.0)  # a warped object's scale along one random axis
Box = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive


@dataclass(frozen=True)
class Damaged:
    """A scene, the damage drawn on it (`render_damaged`) and what the picture shows by the rule
    (`rule_objects`)."""

    scene: Scene
    kind: str
    detail: str
    image: np.ndarray = field(repr=False)  # [H, W, 3] uint8
    objects: tuple[Thing, ...]


def _box(obj: SceneObject, geo: Geometry) -> Box:
    r = geo.radius(obj.size)
    return obj.x - r, obj.y - r, obj.x + r, obj.y + r


def _clear(box: Box, scene: Scene, skip: int, on_canvas: bool = True) -> bool:
    """The box keeps the world's gap to every object but `skip` (and lies on the canvas if `on_canvas`)."""
    geo = scene.geometry
    x0, y0, x1, y1 = box
    if on_canvas and (x0 < 1 or y0 < 1 or x1 > scene.canvas - 2 or y1 > scene.canvas - 2):
        return False
    for i, obj in enumerate(scene.objects):
        if i == skip:
            continue
        a0, b0, a1, b1 = _box(obj, geo)
        if x0 <= a1 + geo.gap and a0 <= x1 + geo.gap and y0 <= b1 + geo.gap and b0 <= y1 + geo.gap:
            return False
    return True


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, geo: Geometry, color: str | None = None) -> None:
    primitive, points = shape_outline(obj, geo.radius(obj.size))
    getattr(draw, primitive)(points, fill=PALETTE[color or obj.color])


def _canvas_without(scene: Scene, index: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = render_pil(Scene(scene.canvas, tuple(o for i, o in enumerate(scene.objects) if i != index)))
    return image, ImageDraw.Draw(image)


def _painted_box(image: Image.Image, color: str, near: Box) -> Box | None:
    """Bounding box of the pixels of exactly `color` inside `near` (clipped to the canvas)."""
    x0, y0, x1, y1 = max(near[0], 0), max(near[1], 0), min(near[2], image.width - 1), min(near[3], image.height - 1)
    array = np.asarray(image)[y0 : y1 + 1, x0 : x1 + 1]
    ys, xs = np.nonzero((array == PALETTE[color]).all(axis=-1))
    if len(xs) == 0:
        return None
    return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()), y0 + int(ys.max())


def _unknown_at(thing: Thing, box: Box) -> Thing:
    return replace(thing, shape=UNKNOWN, x=(box[0] + box[2]) / 2, y=(box[1] + box[3]) / 2)


def _result(scene: Scene, kind: str, detail: str, image: Image.Image, objects: list[Thing]) -> Damaged:
    ordered = tuple(sorted(objects, key=lambda t: (t.x, t.y)))
    return Damaged(scene, kind, detail, np.asarray(image, dtype=np.uint8).copy(), ordered)


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """A random star-shaped polygon around (cx, cy): 7-11 vertices at jittered angles and radii."""
    n = int(rng.integers(7, 12))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(0.45, 1.15, n)
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]


def _no_shape(mask: np.ndarray, min_area: int = 1) -> bool:
    """Whether a boolean mask holds >= `min_area` pixels and falls outside every shape's definition
    (`verify.shape_of`)."""
    ys, xs = np.nonzero(mask)
    return len(xs) >= min_area and shape_of(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]) == UNKNOWN


def _blob_mask_is_no_shape(points: list[tuple[float, float]], size: int, min_area: int = 1) -> bool:
    """Whether the blob, drawn alone, is big enough and of no shape."""
    image = Image.new("1", (size, size), 0)
    ImageDraw.Draw(image).polygon(points, fill=1)
    return _no_shape(np.asarray(image, dtype=bool), min_area)


def _outline(shape: str, cx: float, cy: float, r: float, n: int = 36) -> np.ndarray:
    """n points [n, 2] evenly spaced along the ideal outline of a shape (as `render.shape_outline` draws it)."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
        return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    corners = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)] if shape == "square" else [
        (cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    corners = np.array([*corners, corners[0]], dtype=float)
    lengths = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    at = np.linspace(0, lengths.sum(), n, endpoint=False)
    edge = np.searchsorted(np.cumsum(lengths), at, side="right")
    start = np.concatenate([[0], np.cumsum(lengths)])[edge]
    t = ((at - start) / lengths[edge])[:, None]
    return corners[edge] * (1 - t) + corners[edge + 1] * t


def _warped(obj: SceneObject, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """The object's outline, squashed along one axis and jittered radially by smoothed noise."""
    points = _outline(obj.shape, obj.x, obj.y, r)
    centre = np.array([obj.x, obj.y], dtype=float)
    squash = np.ones(2)
    squash[rng.integers(2)] = rng.uniform(*WARP_SQUASH)
    noise = rng.normal(0, rng.uniform(*WARP_NOISE), len(points))
    noise = np.convolve(np.concatenate([noise[-2:], noise, noise[:2]]), np.ones(5) / 5 * 2, mode="valid")  # smooth
    offsets = (points - centre) * squash
    distance = np.linalg.norm(offsets, axis=1, keepdims=True).clip(min=1e-6)
    warped = centre + offsets + offsets / distance * (noise[:, None] * r)
    return [tuple(p) for p in warped.tolist()]


def _warp_one(
    scene: Scene, index: int, thing: Thing, draw: ImageDraw.ImageDraw, image: Image.Image, rng: np.random.Generator
) -> Thing | None:
    """Draw object `index` warped (`_warped`); the thing it now is by the world's shape definition, or None
    when the warped outline comes too close to another object."""
    obj, geo = scene.objects[index], scene.geometry
    r = geo.radius(obj.size)
    fill = PALETTE[obj.color]
    draw.polygon(_warped(obj, r, rng), fill=fill)
    drawn = (np.asarray(image) == fill).all(axis=-1)
    near = np.zeros_like(drawn)
    near[max(obj.y - 2 * r, 0) : obj.y + 2 * r + 1, max(obj.x - 2 * r, 0) : obj.x + 2 * r + 1] = True
    ys, xs = np.nonzero(drawn & near)
    if len(xs) == 0:
        return None
    extent = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    if not _clear(extent, scene, index):
        return None
    crop = (drawn & near)[extent[1] : extent[3] + 1, extent[0] : extent[2] + 1]
    size = "small" if max(crop.shape) < geo.size_threshold() else "large"
    return replace(thing, shape=shape_of(crop), size=size, x=(extent[0] + extent[2]) / 2, y=(extent[1] + extent[3]) / 2)


def warp_scene(scene: Scene, rng: np.random.Generator) -> Damaged | None:
    """Every object of the scene warped (kind ``warped``, detail "all"), as a generated picture's objects
    all are a little; None when one comes too close to another."""
    rng = as_generator(rng)
    image = Image.new("RGB", (scene.canvas, scene.canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects = things(scene.objects)
    for index in range(len(objects)):
        warped = _warp_one(scene, index, objects[index], draw, image, rng)
        if warped is None:
            return None
        objects[index] = warped
    return _result(scene, "warped", "all", image, objects)


def damage_scene(
    scene: Scene, rng: np.random.Generator, kind: str | None = None, index: int | None = None
) -> Damaged | None:
    """One random damage of the given kind (default: uniform) to object `index` (default: random);
    None when it cannot be drawn clear of the other objects (callers draw again)."""
    rng = as_generator(rng)
    if kind is not None and kind not in DAMAGE_KINDS:  # (the last branch below draws any other name as an occlusion)
        raise UserError(f"unknown damage kind {kind!r}; expected one of {', '.join(DAMAGE_KINDS)}")
    kind = kind or DAMAGE_KINDS[rng.integers(len(DAMAGE_KINDS))]
    geo, canvas = scene.geometry, scene.canvas
    objects = things(scene.objects)
    if kind in ("extra", "speck"):
        return _clutter(scene, rng, kind, objects)
    if not scene.objects:
        return None
    index = int(rng.integers(len(scene.objects))) if index is None else index
    if not 0 <= index < len(scene.objects):
        raise UserError(f"index {index} names no object of a scene with {len(scene.objects)}")
    obj = scene.objects[index]
    r = geo.radius(obj.size)
    box = _box(obj, geo)
    image, draw = _canvas_without(scene, index)
    fill = PALETTE[obj.color]
    if kind == "warped":
        warped = _warp_one(scene, index, objects[index], draw, image, rng)
        if warped is None:
            return None
        objects[index] = warped
        return _result(scene, kind, warped.shape, image, objects)
    if kind == "malformed":
        detail = MALFORMATIONS[rng.integers(len(MALFORMATIONS))]
        x0, y0, x1, y1 = box
        if detail == "stretch":
            long = round(r * STRETCH)
            box = (obj.x - long, y0, obj.x + long, y1) if rng.random() < 0.5 else (x0, obj.y - long, x1, obj.y + long)
            x0, y0, x1, y1 = box
            primitive = shape_outline(obj, 0)[0]
            points = [(obj.x, y0), (x1, y1), (x0, y1)] if primitive == "polygon" else [(x0, y0), (x1, y1)]
            getattr(draw, primitive)(points, fill=fill)
        elif detail == "invert":
            draw.polygon([(x0, y0), (x1, y0), (obj.x, y1)], fill=fill)
        elif detail == "plus":
            half = (x1 - x0 + 1) // (2 * PLUS_BAR)
            draw.rectangle([(obj.x - half, y0), (obj.x + half, y1)], fill=fill)
            draw.rectangle([(x0, obj.y - half), (x1, obj.y + half)], fill=fill)
        else:
            # (one below the verifier's smallest object would be an object the picture does not show)
            blobs = (_blob(rng, obj.x, obj.y, r) for _ in range(20))
            points = next((p for p in blobs if _blob_mask_is_no_shape(p, canvas, speck_sizes(canvas)[1])), None)
            if points is None:
                return None
            draw.polygon(points, fill=fill)
        if not _clear(box, scene, index):
            return None
        objects[index] = _unknown_at(objects[index], box)
        return _result(scene, kind, detail, image, objects)
    if kind == "cut":
        sides = CUT_SIDES[:3] if obj.shape == "triangle" else CUT_SIDES  # a triangle cut from below is a triangle
        side = sides[rng.integers(len(sides))]
        _draw(draw, obj, geo)
        x0, y0, x1, y1 = box
        n = round(rng.uniform(*CUT_FRACTION) * (2 * r + 1))
        cover, kept = {
            "left": ((x0, y0, x0 + n - 1, y1), (x0 + n, y0, x1, y1)),
            "right": ((x1 - n + 1, y0, x1, y1), (x0, y0, x1 - n, y1)),
            "top": ((x0, y0, x1, y0 + n - 1), (x0, y0 + n, x1, y1)),
            "bottom": ((x0, y1 - n + 1, x1, y1), (x0, y0, x1, y1 - n)),
        }[side]
        draw.rectangle([cover[:2], cover[2:]], fill=BACKGROUND)
        objects[index] = _unknown_at(objects[index], kept)
        return _result(scene, kind, side, image, objects)
    if kind == "edge":
        sides = CUT_SIDES[:3] if obj.shape == "triangle" else CUT_SIDES  # a triangle's top alone is a triangle
        side = sides[rng.integers(len(sides))]
        beyond = round(rng.uniform(*EDGE_FRACTION) * (2 * r + 1))
        x, y = {"left": (r - beyond, obj.y), "right": (canvas - 1 - r + beyond, obj.y),
                "top": (obj.x, r - beyond), "bottom": (obj.x, canvas - 1 - r + beyond)}[side]
        moved = SceneObject(obj.shape, obj.color, obj.size, x, y)  # partly off the canvas: in no Scene
        box = _box(moved, geo)
        if not _clear(box, scene, index, on_canvas=False):
            return None
        _draw(draw, moved, geo)
        visible = _painted_box(image, obj.color, box)
        if visible is None or not _no_shape((np.asarray(image)[visible[1] : visible[3] + 1, visible[0] : visible[2] + 1]
                                             == PALETTE[obj.color]).all(axis=-1)):
            return None  # (on a canvas under 40 px, 2 px off the edge can leave a small box's rest a shape)
        objects[index] = _unknown_at(objects[index], visible)
        return _result(scene, kind, side, image, objects)
    # merged / occluded: a twin overlapping the object's box along one axis
    merged = kind == "merged"
    offset = MERGE_OFFSET if merged else OCCLUDE_OFFSET
    along = int(round(rng.uniform(*offset) * 2 * r)) * (1 if rng.random() < 0.5 else -1)
    across = int(rng.integers(-1, 2))
    dx, dy = (along, across) if rng.random() < 0.5 else (across, along)
    x, y = obj.x + dx, obj.y + dy
    if not (r <= x < canvas - r and r <= y < canvas - r):
        return None
    color = obj.color if merged else [c for c in COLORS if c != obj.color][rng.integers(len(COLORS) - 1)]
    twin = SceneObject(random_kind(rng)[0], color, obj.size, x, y)
    a, b = box, _box(twin, geo)
    union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    if not _clear(union, scene, index):
        return None
    _draw(draw, obj, geo)
    _draw(draw, twin, geo)  # on top
    painted = (np.asarray(image) == PALETTE[obj.color]).all(axis=-1)
    if merged:
        if ndimage.label(painted[union[1] : union[3] + 1, union[0] : union[2] + 1], structure=EIGHT)[1] != 1:
            return None  # a gap between the two (a triangle beside a circle): two objects, not one blob
        objects[index] = _unknown_at(objects[index], union)
        return _result(scene, kind, "", image, objects)
    hidden = _painted_box(image, obj.color, box)
    if hidden is None or not _no_shape(painted[hidden[1] : hidden[3] + 1, hidden[0] : hidden[2] + 1],
                                       speck_sizes(scene.canvas)[1]):
        return None  # too little covered to be no shape any more, or a sliver below an object's size
    objects[index] = _unknown_at(objects[index], hidden)
    top = things([twin])[0]
    objects.append(replace(top, key=len(objects)))
    return _result(scene, kind, "", image, objects)


def _touches(after: np.ndarray, before: np.ndarray) -> bool:
    """Whether what was drawn between `before` and `after` touches (8-neighbours) anything drawn before it: two
    objects that touch read as one blob, which the rule would count as two."""
    drawn = (after != before).any(axis=-1)
    return bool((ndimage.binary_dilation(drawn, structure=EIGHT) & (before != BACKGROUND).any(axis=-1)).any())


def speck_sizes(canvas: int) -> tuple[tuple[int, int], int]:
    """`SPECK_RADIUS` and `SPECK_AREA` scaled up to a canvas above 64 px as the verifier's smallest object is
    (lengths by the side, areas by its square), so that a speck stays above that floor: at 128 px the 64-px sizes
    fell below it. Never scaled down: on a 32-px canvas proportionally smaller specks and remnants were misread."""
    scale = max(1.0, canvas / DEFAULT_CANVAS)
    return (round(SPECK_RADIUS[0] * scale), round(SPECK_RADIUS[1] * scale)), round(SPECK_AREA * scale**2)


def _clutter(scene: Scene, rng: np.random.Generator, kind: str, objects: list[Thing]) -> Damaged | None:
    """An extra intact object, or one or two specks (irregular, of no shape), at free positions."""
    image = render_pil(scene)
    draw = ImageDraw.Draw(image)
    if kind == "extra":
        obj = place_object(random_kind(rng), scene.objects, rng, scene.canvas)
        if obj is None:
            return None
        _draw(draw, obj, scene.geometry)
        return _result(scene, kind, "", image, [*objects, replace(things([obj])[0], key=len(objects))])
    placed = list(scene.objects)
    for _ in range(int(rng.integers(1, 3))):
        spot = place_object(("circle", COLORS[rng.integers(len(COLORS))], "small"), placed, rng, scene.canvas)
        if spot is None:
            return None
        (low, high), area = speck_sizes(scene.canvas)
        radius = float(rng.integers(low, high + 1)) * 1.15
        blobs = (_blob(rng, spot.x, spot.y, radius) for _ in range(20))
        points = next((p for p in blobs if _blob_mask_is_no_shape(p, scene.canvas, area)), None)
        if points is None:
            return None
        before = np.asarray(image).copy()
        draw.polygon(points, fill=PALETTE[spot.color])
        if _touches(np.asarray(image), before):  # (on a canvas under 64 px a speck outgrows a small circle's room)
            return None
        placed.append(spot)
        box = _painted_box(image, spot.color, _box(spot, scene.geometry))
        if box is None:
            return None
        speck = Thing(UNKNOWN, spot.color, "small", 0.0, 0.0, key=len(objects))
        objects.append(_unknown_at(speck, box))
    return _result(scene, kind, "", image, objects)


def render_damaged(damaged: Damaged) -> np.ndarray:
    """The damaged picture as a uint8 RGB array, drawn like `render` (exact palette colours, no anti-aliasing)."""
    return damaged.image


def rule_objects(damaged: Damaged) -> list[Thing]:
    """What the picture shows by the world's rule (module docstring), left to right."""
    return list(damaged.objects)


def rule_satisfies(damaged: Damaged, spec: PromptSpec) -> bool:
    """The truth of `spec` for the damaged picture, by the rule."""
    return check(damaged.objects, spec, damaged.scene.geometry.margin)[0]
