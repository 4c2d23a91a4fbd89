"""Scenes: coloured shapes on a square canvas, their geometry, and the one definition of the relations.

Why this module exists: every other part of ShapeWorld (renderer, prompts, questions, verifier) needs the
same vocabulary of attributes and the same geometric rules, so they live here, once.

Geometry (all lengths scale with the canvas side, `canvas`; numbers below are for 64 x 64):

* An object is a shape drawn inside a square box of side 2r+1 centred on an integer pixel (x, y):
  small r = 6 (13 px across), large r = 11 (23 px across). (x, y) is the centre of the object's bounding box
  (x grows rightwards, y grows downwards); the verifier measures the same quantity.
* Every box keeps >= 1 px from the canvas edge, and two boxes keep >= `gap` = 4 px of background
  between them, so objects never overlap or touch, even after a blur.
* Relations, with margin m = 6 px (6 * canvas / 64, rounded):
  A is *left of* B iff B.x - A.x >= m; *right of* iff A.x - B.x >= m;
  A is *above* B iff B.y - A.y >= m; *below* iff A.y - B.y >= m.
  A diagonal pair can be both left of and above. Every generated scene keeps, for every pair of objects,
  |dx| and |dy| outside the open band (m - band, m + band) = (3, 9) with band = 3 px: every offset is
  >= 3 px from the threshold, so a verifier whose centre estimates are off by < 1.5 px per object agrees
  with the ground truth on every relation, including the false ones.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from unigap.errors import UnigapDeprecationWarning, UserError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_OBJECTS = 4
MIN_CANVAS = 32
MAX_CANVAS = 8192  # (`world sample --size`'s limit too)
RESTARTS = 1000  # whole-scene retries before giving up; placement succeeds far sooner on any valid canvas
DEFAULT_CANVAS = 64


class Placed(Protocol):
    """Anything with a shape, colour, size word and centre: a ground-truth object or a detected one."""

    shape: str
    color: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class Geometry:
    """Pixel lengths for one canvas side, derived by scaling the 64 x 64 reference values."""

    canvas: int
    radius_small: int
    radius_large: int
    gap: int
    margin: int
    band: int

    @classmethod
    def for_canvas(cls, canvas: int = DEFAULT_CANVAS) -> Geometry:
        """Scale the reference geometry; canvases below `MIN_CANVAS` cannot keep objects separable, and above
        `MAX_CANVAS` only cost memory (a preference row's scene of canvas 100000 took 24 GB to render; 8192, 0.2)."""
        whole = isinstance(canvas, numbers.Integral) and not isinstance(canvas, bool)
        if not (whole and MIN_CANVAS <= canvas <= MAX_CANVAS):
            raise UserError(f"canvas size must be an integer from {MIN_CANVAS} to {MAX_CANVAS}, got {canvas!r}")
        canvas = int(canvas)  # (a numpy integer too: the geometry holds plain ints)
        s = canvas / DEFAULT_CANVAS
        return cls(
            canvas=canvas,
            radius_small=round(6 * s),
            radius_large=round(11 * s),
            gap=max(3, round(4 * s)),
            margin=round(6 * s),
            band=max(3, round(3 * s)),
        )

    def radius(self, size: str) -> int:
        """Half-side (in px, excluding the centre pixel) of the box of a small or large object."""
        return self.radius_small if size == "small" else self.radius_large

    def size_threshold(self) -> float:
        """Box side separating small from large: halfway between the two rendered sides."""
        return float(self.radius_small + self.radius_large + 1)


def _fraction(value: Any) -> bool:
    """A real number that is no whole number (inf and nan among them)."""
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not float(value).is_integer()


def check_integer(name: str, value: Any, least: int = 1) -> None:
    """A count (of samples, tokens, questions): an integer >= `least`, not a bool nor 2.5 (which would fail deep inside
    numpy or torch, or be rounded up), as one `UserError` line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise UserError(f"{name} must be an integer >= {least}, got {value!r}")


def whole_number(value: Any) -> int:
    """An integer field as a plain int (from a numpy integer too, or a JSON number like 20.0): a fraction, a bool,
    inf or nan is a `ValueError`, not cut to an int."""
    if isinstance(value, bool) or _fraction(value):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


@dataclass(frozen=True)
class SceneObject:
    """One ground-truth object: what it is and where its bounding-box centre lies (integer pixels)."""

    shape: str
    color: str
    size: str
    x: int
    y: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise UserError(f"unknown shape {self.shape!r}; expected one of {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise UserError(f"unknown color {self.color!r}; expected one of {', '.join(COLORS)}")
        if self.size not in SIZES:
            raise UserError(f"unknown size {self.size!r}; expected one of {', '.join(SIZES)}")
        for name in ("x", "y"):  # plain ints: a numpy one does not write as JSON, a fraction is not a pixel
            value = getattr(self, name)
            if _fraction(value) and math.isfinite(value):  # (cut to an int before fractions were refused)
                warnings.warn(f"{name} {float(value)} of a scene object is not a whole number of pixels: cut to "
                              f"{int(value)}, and refused in a later release", UnigapDeprecationWarning, stacklevel=3)
                value = int(value)
            try:
                object.__setattr__(self, name, whole_number(value))
            except (TypeError, ValueError) as exc:
                raise UserError(f"{name} of a scene object must be a whole number of pixels: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "x": self.x, "y": self.y}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneObject:
        try:
            return cls(str(d["shape"]), str(d["color"]), str(d["size"]), d["x"], d["y"])  # (checked there)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed scene object {d!r}: {exc}") from None


@dataclass(frozen=True)
class Scene:
    """A canvas side and up to `MAX_OBJECTS` objects (none: what removing a scene's only one leaves), kept sorted
    left-to-right (then top-to-bottom).

    The canonical order makes two scenes equal exactly when they draw the same picture, which is what
    "splits share no scene" needs, and gives descriptions their left-to-right order. That holds for objects kept
    apart, as every sampled, damaged and edited scene keeps them; a scene built by hand or read from JSON is not
    checked for overlap, and there a later-drawn object hides what it covers, which its ground truth still counts.
    """

    canvas: int
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if len(self.objects) > MAX_OBJECTS:  # more is clutter, which no prompt describes
            raise UserError(f"a scene holds at most {MAX_OBJECTS} objects, got {len(self.objects)}")
        geo = Geometry.for_canvas(self.canvas)
        object.__setattr__(self, "canvas", geo.canvas)  # a plain int (from a numpy one too): scenes hash as JSON
        for o in self.objects:
            r = geo.radius(o.size)
            if not (r <= o.x < self.canvas - r and r <= o.y < self.canvas - r):
                raise UserError(f"{o} does not fit on a {self.canvas}x{self.canvas} canvas")
        ordered = tuple(sorted(self.objects, key=lambda o: (o.x, o.y, o.shape, o.color, o.size)))
        object.__setattr__(self, "objects", ordered)

    def to_dict(self) -> dict[str, Any]:
        return {"canvas": self.canvas, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        try:
            canvas, objects = whole_number(d["canvas"]), d["objects"]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed scene {d!r}: {exc}") from None
        if not isinstance(objects, list | tuple):
            raise UserError(f"malformed scene {d!r}: 'objects' must be a list, got {type(objects).__name__}")
        return cls(canvas, tuple(SceneObject.from_dict(o) for o in objects))

    @property
    def geometry(self) -> Geometry:
        return Geometry.for_canvas(self.canvas)


def relation_holds(a: Placed, b: Placed, relation: str, margin: float) -> bool:
    """The single definition of the four relations (see module docstring); y grows downwards."""
    if relation == "left of":
        return b.x - a.x >= margin
    if relation == "right of":
        return a.x - b.x >= margin
    if relation == "above":
        return b.y - a.y >= margin
    if relation == "below":
        return a.y - b.y >= margin
    raise ValueError(f"unknown relation {relation!r}")


def _compatible(geo: Geometry, a: SceneObject, b: SceneObject) -> bool:
    """Boxes at least `gap` apart, and both centre offsets clear of the ambiguous relation band."""
    reach = geo.radius(a.size) + geo.radius(b.size) + geo.gap
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    if dx <= reach and dy <= reach:
        return False
    lo, hi = geo.margin - geo.band, geo.margin + geo.band
    return not (lo < dx < hi or lo < dy < hi)


def reads_clearly(a: Placed, b: Placed, relation: str) -> bool:
    """A is displaced from B at least as much along the relation's axis as along the other one, so a
    picture of "A left of B" is not mostly "A above B"."""
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return dx >= dy if relation in ("left of", "right of") else dy >= dx


def place_object(
    kind: tuple[str, str, str],
    placed: Sequence[SceneObject],
    rng: np.random.Generator,
    canvas: int = DEFAULT_CANVAS,
    accept: Callable[[SceneObject], bool] | None = None,
    tries: int = 200,
) -> SceneObject | None:
    """A (shape, color, size) object at a random position compatible with `placed` (and `accept`ed);
    None when `tries` random positions all fail. Rejection sampling from one draw of positions."""
    geo = Geometry.for_canvas(canvas)
    shape, color, size = kind
    r = geo.radius(size)
    for x, y in rng.integers(1 + r, canvas - 1 - r, size=(tries, 2)).tolist():  # one draw: fast
        obj = SceneObject(shape, color, size, x, y)
        if all(_compatible(geo, obj, other) for other in placed) and (accept is None or accept(obj)):
            return obj
    return None


def place_objects(
    kinds: list[tuple[str, str, str]],
    rng: np.random.Generator,
    canvas: int = DEFAULT_CANVAS,
    tries: int = 200,
) -> Scene | None:
    """Put (shape, color, size) objects at random valid positions, in order; None if they do not fit.

    Rejection sampling one object at a time; the caller retries (with fresh randomness) on None.
    """
    placed: list[SceneObject] = []
    for kind in kinds:
        obj = place_object(kind, placed, rng, canvas, tries=tries)
        if obj is None:
            return None
        placed.append(obj)
    return Scene(canvas, tuple(placed))


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """What the world's drawing functions take: a numpy Generator (used as it is, so a caller's stream goes on) or an
    int seed (a fresh Generator); anything else is one clear error rather than an AttributeError deep inside."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise UserError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or an int seed, got "
                    f"{type(rng).__name__}")


def random_kind(rng: np.random.Generator) -> tuple[str, str, str]:
    """A uniformly random (shape, color, size)."""
    return (
        SHAPES[rng.integers(len(SHAPES))],
        COLORS[rng.integers(len(COLORS))],
        SIZES[rng.integers(len(SIZES))],
    )


def sample_scene(
    rng: np.random.Generator, canvas: int = DEFAULT_CANVAS, n_objects: int | None = None
) -> Scene:
    """A random scene with `n_objects` (default: uniform 1-4) uniformly random objects."""
    rng = as_generator(rng)
    try:  # (2.5 failed in `range`, True drew one object)
        n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else whole_number(n_objects)
    except (TypeError, ValueError) as exc:
        raise UserError(f"n_objects must be a whole number: {exc}") from None
    if not 1 <= n <= MAX_OBJECTS:
        raise UserError(f"a scene holds 1-{MAX_OBJECTS} objects, got {n}")
    for _ in range(RESTARTS):
        scene = place_objects([random_kind(rng) for _ in range(n)], rng, canvas)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {n} objects on a {canvas}x{canvas} canvas")
