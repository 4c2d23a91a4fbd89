"""Damaged pictures: rendered scenes with the failures generated images show, and the rule that labels them.

Why: a judge that should reject a model's broken images must see broken images with a right answer. The
model's own images cannot supply them (labelling those by the verifier would train the judge on the
independent judge's verdicts), so the world draws the damage itself, on scenes whose truth it knows.

Kinds (each damages one object of the scene):

* ``malformed``: the object drawn in a shape no ShapeWorld shape has: stretched to 1.8x its box along one
  axis, a triangle pointing down, or a plus sign.
* ``cut``: 40-55 % of the object's box (one side: left, right, top or bottom; not the bottom of a triangle,
  which leaves a triangle) painted over with background.
* ``merged``: a second object of the same colour and size overlapping it, the two drawn as one blob at
  least 1.4x longer than wide.
* ``extra``: one more (intact) object at a free position; a fifth object makes the picture clutter.

**The rule** (`rule_objects`): a malformed, cut or merged object is an object of *unknown* shape (it
matches no prompt item and no shape reference, but it counts as an object); two merged objects count as
one; an extra object is an object like any other. The truth of a prompt is `check` on the rule's objects,
the same function the ground truth and the verifier use. Damage is only drawn where the damaged object
keeps the world's gap to every other object, so it never touches a third one.
`benchmarks/damage_agreement.py` measures how often the verifier's reading of a damaged render agrees
with the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from unigap.world.edits import UNKNOWN, Thing, things
from unigap.world.prompts import PromptSpec, check
from unigap.world.render import BACKGROUND, PALETTE, render_pil, shape_outline
from unigap.world.scene import Geometry, Scene, SceneObject, random_kind
from unigap.world.scene import place_object as _place_object

DAMAGE_KINDS: tuple[str, ...] = ("malformed", "cut", "merged", "extra")
MALFORMATIONS: tuple[str, ...] = ("stretch", "invert", "plus")
CUT_SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")
STRETCH = 1.8
CUT_FRACTION = (0.40, 0.55)  # share of the box painted over
MERGE_OFFSET = (0.75, 0.95)  # the twin's centre offset, in box sides
PLUS_BAR = 4  # a plus sign's bars are a quarter of the box wide (area ~0.44 of the box: no shape's)


@dataclass(frozen=True)
class Damaged:
    """A scene, the damage drawn on it, and its parameters. `box` is the damaged object's drawn extent
    (x0, y0, x1, y1, inclusive) for malformed, cut and merged."""

    scene: Scene
    kind: str
    index: int  # the damaged object in scene.objects (-1 for extra)
    detail: str = ""  # malformation or cut side
    other: SceneObject | None = None  # merged: the overlapping twin; extra: the added object
    box: tuple[int, int, int, int] | None = None
    cut: float = 0.0


def _box(obj: SceneObject, geo: Geometry) -> tuple[int, int, int, int]:
    r = geo.radius(obj.size)
    return obj.x - r, obj.y - r, obj.x + r, obj.y + r


def _clear(box: tuple[int, int, int, int], scene: Scene, skip: int) -> bool:
    """The box lies on the canvas and keeps the world's gap to every object but `skip`."""
    geo = scene.geometry
    x0, y0, x1, y1 = box
    if x0 < 1 or y0 < 1 or x1 > scene.canvas - 2 or y1 > scene.canvas - 2:
        return False
    for i, obj in enumerate(scene.objects):
        if i == skip:
            continue
        a0, b0, a1, b1 = _box(obj, geo)
        if x0 <= a1 + geo.gap and a0 <= x1 + geo.gap and y0 <= b1 + geo.gap and b0 <= y1 + geo.gap:
            return False
    return True


def damage_scene(scene: Scene, rng: np.random.Generator, kind: str | None = None, index: int | None = None) -> Damaged | None:
    """One random damage of the given kind (default: uniform) to object `index` (default: random);
    None when it cannot be drawn clear of the other objects (callers draw again)."""
    kind = kind or DAMAGE_KINDS[rng.integers(len(DAMAGE_KINDS))]
    geo = scene.geometry
    if kind == "extra":
        obj = _place_object(random_kind(rng), scene.objects, rng, scene.canvas)
        return None if obj is None else Damaged(scene, kind, -1, other=obj)
    if not scene.objects:
        return None
    index = int(rng.integers(len(scene.objects))) if index is None else index
    obj = scene.objects[index]
    r = geo.radius(obj.size)
    if kind == "malformed":
        detail = MALFORMATIONS[rng.integers(len(MALFORMATIONS))]
        box = _box(obj, geo)
        if detail == "stretch":
            long = round(r * STRETCH)
            box = (obj.x - long, obj.y - r, obj.x + long, obj.y + r) if rng.random() < 0.5 else (obj.x - r, obj.y - long, obj.x + r, obj.y + long)
        return Damaged(scene, kind, index, detail, box=box) if _clear(box, scene, index) else None
    if kind == "cut":
        sides = CUT_SIDES[:3] if obj.shape == "triangle" else CUT_SIDES  # a triangle cut from below is a triangle
        side = sides[rng.integers(len(sides))]
        return Damaged(scene, kind, index, side, box=_box(obj, geo), cut=float(rng.uniform(*CUT_FRACTION)))
    # merged: a same-colour, same-size twin overlapping the object's box along one axis, so the blob is
    # at least 1.4x longer than wide (the verifier calls longer blobs no shape)
    twin_shape = random_kind(rng)[0]
    along = int(round(rng.uniform(*MERGE_OFFSET) * 2 * r)) * (1 if rng.random() < 0.5 else -1)
    across = int(rng.integers(-1, 2))
    dx, dy = (along, across) if rng.random() < 0.5 else (across, along)
    twin = SceneObject(twin_shape, obj.color, obj.size, obj.x + dx, obj.y + dy) if _fits(obj, dx, dy, obj.size, scene) else None
    if twin is None:
        return None
    a, b = _box(obj, geo), _box(twin, geo)
    box = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    return Damaged(scene, kind, index, other=twin, box=box) if _clear(box, scene, index) else None


def _fits(obj: SceneObject, dx: int, dy: int, size: str, scene: Scene) -> bool:
    r = scene.geometry.radius(size)
    x, y = obj.x + dx, obj.y + dy
    return r <= x < scene.canvas - r and r <= y < scene.canvas - r


def render_damaged_pil(damaged: Damaged) -> Image.Image:
    """The damaged picture, drawn like `render_pil` (exact palette colours, no anti-aliasing)."""
    scene, kind = damaged.scene, damaged.kind
    if kind == "extra":
        return render_pil(Scene(scene.canvas, (*scene.objects, damaged.other)))
    intact = Scene(scene.canvas, tuple(o for i, o in enumerate(scene.objects) if i != damaged.index))
    image = render_pil(intact)
    draw = ImageDraw.Draw(image)
    obj = scene.objects[damaged.index]
    fill = PALETTE[obj.color]
    x0, y0, x1, y1 = damaged.box
    if kind == "merged":
        for part in (obj, damaged.other):
            primitive, points = shape_outline(part, scene.geometry.radius(part.size))
            getattr(draw, primitive)(points, fill=fill)
    elif kind == "cut":
        primitive, points = shape_outline(obj, scene.geometry.radius(obj.size))
        getattr(draw, primitive)(points, fill=fill)
    elif damaged.detail == "stretch":
        primitive, _ = shape_outline(obj, 0)
        points = [(obj.x, y0), (x1, y1), (x0, y1)] if primitive == "polygon" else [(x0, y0), (x1, y1)]
        getattr(draw, primitive)(points, fill=fill)
    elif damaged.detail == "invert":
        draw.polygon([(x0, y0), (x1, y0), (obj.x, y1)], fill=fill)
    else:  # plus: two crossing bars through the centre
        half = (x1 - x0 + 1) // (2 * PLUS_BAR)
        draw.rectangle([(obj.x - half, y0), (obj.x + half, y1)], fill=fill)
        draw.rectangle([(x0, obj.y - half), (x1, obj.y + half)], fill=fill)
    if kind == "cut":
        cover, _ = _cut_boxes(damaged)
        draw.rectangle([cover[:2], cover[2:]], fill=BACKGROUND)
    return image


def render_damaged(damaged: Damaged) -> np.ndarray:
    """`render_damaged_pil` as a uint8 RGB array."""
    return np.asarray(render_damaged_pil(damaged), dtype=np.uint8).copy()


def rule_objects(damaged: Damaged) -> list[Thing]:
    """What the picture shows by the world's rule (module docstring), left to right."""
    out = things(damaged.scene.objects)
    if damaged.kind == "extra":
        extra = things([damaged.other])[0]
        out = sorted([*out, replace(extra, key=len(out))], key=lambda t: (t.x, t.y))
        return out
    x0, y0, x1, y1 = damaged.box
    if damaged.kind == "cut":
        x0, y0, x1, y1 = _cut_boxes(damaged)[1]
    out[damaged.index] = replace(out[damaged.index], shape=UNKNOWN, x=(x0 + x1) / 2, y=(y0 + y1) / 2)
    return sorted(out, key=lambda t: (t.x, t.y))


def _cut_boxes(damaged: Damaged) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(painted-over box, kept box) of a cut, inclusive corners."""
    x0, y0, x1, y1 = damaged.box
    horizontal = damaged.detail in ("left", "right")
    n = round(damaged.cut * ((x1 - x0 + 1) if horizontal else (y1 - y0 + 1)))
    return {
        "left": ((x0, y0, x0 + n - 1, y1), (x0 + n, y0, x1, y1)),
        "right": ((x1 - n + 1, y0, x1, y1), (x0, y0, x1 - n, y1)),
        "top": ((x0, y0, x1, y0 + n - 1), (x0, y0 + n, x1, y1)),
        "bottom": ((x0, y1 - n + 1, x1, y1), (x0, y0, x1, y1 - n)),
    }[damaged.detail]


def rule_satisfies(damaged: Damaged, spec: PromptSpec) -> bool:
    """The truth of `spec` for the damaged picture, by the rule."""
    return check(rule_objects(damaged), spec, damaged.scene.geometry.margin)[0]
