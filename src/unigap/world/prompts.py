"""GenEval-like prompts: a structured spec, its text, parsing, sampling, and the ground truth `satisfies`.

Why: generation is judged against a *spec*, not against free text, so the judge is exact. The text is a
deterministic function of the spec and `parse_prompt` inverts it exactly. Prompts never mention size.

Categories, texts and semantics ("matches": same shape, and same colour when the item names one;
objects the prompt does not mention are allowed, up to the world's `MAX_OBJECTS` objects in all):

=================== ====================================== ==============================================
category            example text                           satisfied iff
=================== ====================================== ==============================================
single_object       "a circle"                             >= 1 circle
two_objects         "a circle and a square"                >= 1 circle and >= 1 square (shapes differ)
counting            "three yellow triangles"               exactly 3 yellow triangles (n = 1..4)
colors              "a red circle"                         >= 1 red circle
position            "a purple circle to the left of an     some purple circle is left of some orange
                    orange square"                         square (relations: see `unigap.world.scene`);
                                                           the two items differ
color_attribution   "a blue square and a green triangle"   >= 1 blue square and >= 1 green triangle
                                                           (shapes differ and colours differ)
=================== ====================================== ==============================================

`check` implements this table once, for any objects with shape/color/x/y, so the ground truth
(`satisfies`, on scene objects) and the verifier (on detected objects) cannot disagree. An image with
more than `MAX_OBJECTS` objects (unrecognised blobs included) is no ShapeWorld scene and satisfies no
prompt: without this rule, random clutter — the decoding of random image tokens holds ~11 blobs — met
the existence prompts as often as a trained model's images did.

Scenes sampled for a spec (`sample_scene_for`) contain the required objects plus 0..(4 - required)
distractors that match no item of the prompt; for position prompts the witness pair is also displaced
at least as much along the named axis as along the other, so the picture reads unambiguously.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from unigap.errors import UserError
from unigap.world.scene import (
    COLORS,
    DEFAULT_CANVAS,
    MAX_OBJECTS,
    RELATIONS,
    RESTARTS,
    SHAPES,
    SIZES,
    Placed,
    Scene,
    as_generator,
    place_objects,
    reads_clearly,
    relation_holds,
    whole_number,
)

CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_objects",
    "counting",
    "colors",
    "position",
    "color_attribution",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


def article(word: str) -> str:
    """'a' or 'an' for the word that follows (only 'orange' starts with a vowel sound here)."""
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "s"


@dataclass(frozen=True)
class Item:
    """One thing a prompt asks for: a shape, optionally a colour, and how many (only counting uses > 1)."""

    shape: str
    color: str | None = None
    count: int = 1

    def matches(self, obj: Placed) -> bool:
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)

    @property
    def noun(self) -> str:
        """'red circle' or 'circle' (singular, no article)."""
        return self.shape if self.color is None else f"{self.color} {self.shape}"

    @property
    def phrase(self) -> str:
        """'a red circle', 'an orange square', 'a circle'."""
        return f"{article(self.noun)} {self.noun}"

    @property
    def counted(self) -> str:
        """'one red circle', 'three red circles' (counting prompts)."""
        things = self.noun if self.count == 1 else f"{self.color} {plural(self.shape)}"
        return f"{NUMBER_WORDS[self.count]} {things}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "count": self.count}


@dataclass(frozen=True)
class PromptSpec:
    """A structured prompt: category, the items it asks for, and (position only) their relation."""

    category: str
    items: tuple[Item, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        problem = _structure_problem(self)
        if problem:
            raise UserError(f"invalid {self.category!r} prompt spec {self.to_dict()}: {problem}")

    @property
    def text(self) -> str:
        """The prompt text, a deterministic function of the spec."""
        if self.category == "counting":
            return self.items[0].counted
        if self.category == "position":
            a, b = self.items
            return f"{a.phrase} {RELATION_PHRASES[self.relation or '']} {b.phrase}"
        return " and ".join(item.phrase for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "items": [i.to_dict() for i in self.items],
            "relation": self.relation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSpec:
        try:
            items = tuple(Item(str(i["shape"]), i.get("color"), whole_number(i.get("count", 1))) for i in d["items"])
            return cls(str(d["category"]), items, d.get("relation"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"malformed prompt spec {d!r}: {exc}") from None


def _structure_problem(spec: PromptSpec) -> str:
    """Why a spec is not one the generator could produce ('' if it is)."""
    want_items = {"single_object": 1, "colors": 1, "counting": 1}.get(spec.category, 2)
    if spec.category not in CATEGORIES:
        return f"unknown category; expected one of {', '.join(CATEGORIES)}"
    if len(spec.items) != want_items:
        return f"expected {want_items} item(s), got {len(spec.items)}"
    for item in spec.items:
        if item.shape not in SHAPES or (item.color is not None and item.color not in COLORS):
            return f"unknown shape or color in {item}"
    colored = spec.category not in ("single_object", "two_objects")
    if any((item.color is not None) != colored for item in spec.items):
        return "items must name a color" if colored else "items must not name a color"
    max_count = MAX_OBJECTS if spec.category == "counting" else 1
    if any(not 1 <= item.count <= max_count for item in spec.items):
        return f"item counts must be 1..{max_count}"
    if (spec.relation is not None) != (spec.category == "position") or spec.relation not in (
        None,
        *RELATIONS,
    ):
        return "position prompts (only) need a relation: " + ", ".join(RELATIONS)
    if want_items == 2:
        a, b = spec.items
        if spec.category in ("two_objects", "color_attribution") and a.shape == b.shape:
            return "the two shapes must differ"
        if spec.category == "color_attribution" and a.color == b.color:
            return "the two colors must differ"
        if a == b:
            return "the two items must differ"
    return ""


@cache
def all_specs(category: str | None = None) -> tuple[PromptSpec, ...]:
    """Every valid spec (of one category, or all), in a fixed order; the prompt space is finite (~1,500)."""
    if category is None:
        return tuple(s for c in CATEGORIES for s in all_specs(c))
    if category not in CATEGORIES:
        raise UserError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    colored = [Item(s, c) for c in COLORS for s in SHAPES]
    plain = [Item(s) for s in SHAPES]
    candidates: list[PromptSpec | None]
    if category == "single_object":
        candidates = [PromptSpec(category, (i,)) for i in plain]
    elif category == "colors":
        candidates = [PromptSpec(category, (i,)) for i in colored]
    elif category == "counting":
        candidates = [
            PromptSpec(category, (Item(i.shape, i.color, n),)) for n in range(1, 5) for i in colored
        ]
    else:
        pool = plain if category == "two_objects" else colored
        relations: Sequence[str | None] = RELATIONS if category == "position" else (None,)
        candidates = [
            _try_spec(category, (a, b), r) for a, b in itertools.permutations(pool, 2) for r in relations
        ]
    return tuple(s for s in candidates if s is not None)


def _try_spec(category: str, items: tuple[Item, ...], relation: str | None) -> PromptSpec | None:
    try:
        return PromptSpec(category, items, relation)
    except UserError:
        return None


@cache
def _text_index() -> dict[str, PromptSpec]:
    return {spec.text: spec for spec in all_specs()}


def _attributes(spec: PromptSpec) -> list[tuple]:
    """The spec as attribute tuples, in every item order with the same meaning (a list of one or two)."""
    items = [(i.shape, i.color, i.count) for i in spec.items]
    if spec.category == "position":
        return [(*items[0], *items[1], spec.relation)]
    if len(items) == 2:  # "a circle and a square" means "a square and a circle"
        return [(*items[0], *items[1]), (*items[1], *items[0])]
    return [items[0]]


def near_misses(spec: PromptSpec | str) -> tuple[PromptSpec, ...]:
    """Every prompt of the same category that differs from `spec` in exactly one thing: one item's colour,
    shape or count, or the relation (the side). The judge's hard negatives: a picture of `spec` usually
    fails them, and only careful looking tells which."""
    return _near_misses(as_spec(spec))


@cache
def _near_misses(spec: PromptSpec) -> tuple[PromptSpec, ...]:
    mine = _attributes(spec)

    def one_apart(other: PromptSpec) -> bool:
        theirs = _attributes(other)[0]
        return min(sum(a != b for a, b in zip(m, theirs, strict=True)) for m in mine) == 1

    return tuple(other for other in all_specs(spec.category) if one_apart(other))


def check_text(text: object, what: str) -> None:
    """`UserError` unless `text` is a string: None or a number failed as an AttributeError inside the parser."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, got {type(text).__name__}: {text!r:.60}")


def normalize_text(text: str) -> str:
    """Lower-case, trim, collapse whitespace, drop one trailing period: the forms `parse_prompt` accepts."""
    check_text(text, "a prompt")
    out = " ".join(text.lower().split())
    return out[:-1].rstrip() if out.endswith(".") else out


def parse_prompt(text: str) -> PromptSpec:
    """The spec whose text this is (case, spacing ignored); `UserError` if no ShapeWorld prompt reads so."""
    spec = _text_index().get(normalize_text(text))
    if spec is None:
        raise UserError(
            f"cannot parse prompt {text!r}: not a ShapeWorld prompt (examples: 'a circle', 'a red circle', "
            "'three blue squares', 'a green triangle and a yellow circle', "
            "'a purple circle to the left of an orange square')"
        )
    return spec


def sample_spec(rng: np.random.Generator, category: str | None = None) -> PromptSpec:
    """A spec uniformly from one category (default: a uniformly random category)."""
    rng = as_generator(rng)
    if category is None:
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
    pool = all_specs(category)
    return pool[rng.integers(len(pool))]


def as_spec(spec: PromptSpec | str) -> PromptSpec:
    """A spec, or a ShapeWorld prompt's text read as one (`parse_prompt`): what every public function of the world
    taking a prompt takes (anything else failed as an AttributeError inside them)."""
    if isinstance(spec, str):
        return parse_prompt(spec)
    if not isinstance(spec, PromptSpec):
        raise UserError(f"expected a PromptSpec or a ShapeWorld prompt, got {type(spec).__name__}: {spec!r:.60}")
    return spec


def check(objects: Sequence[Placed], spec: PromptSpec | str, margin: float) -> tuple[bool, str]:
    """Whether objects satisfy the spec (semantics in the module docstring) and a human-readable reason."""
    spec = as_spec(spec)
    if len(objects) > MAX_OBJECTS:
        return False, f"{len(objects)} objects found; a ShapeWorld scene holds at most {MAX_OBJECTS}"
    found = [[o for o in objects if item.matches(o)] for item in spec.items]
    for item, matches in zip(spec.items, found):
        if spec.category == "counting" and len(matches) != item.count:
            return False, f"expected {item.count} {item.noun}(s), found {len(matches)}"
        if not matches:
            return False, f"expected {item.phrase}, found none"
    if spec.category == "position":
        relation = spec.relation or ""
        if not any(relation_holds(a, b, relation, margin) for a in found[0] for b in found[1]):
            where = "; ".join(f"{o.color} {o.shape} at ({o.x:g}, {o.y:g})" for o in found[0] + found[1])
            return False, f"no {spec.items[0].noun} is {relation} a {spec.items[1].noun} ({where})"
    return True, "found " + ", ".join(f"{len(m)} {item.noun}(s)" for item, m in zip(spec.items, found))


def satisfies(scene: Scene, spec: PromptSpec | str) -> bool:
    """Ground truth: does the scene satisfy the spec (or a prompt's text)? The verifier applies the same `check` to
    detections."""
    return check(scene.objects, spec, scene.geometry.margin)[0]


def _required_kinds(spec: PromptSpec, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """The (shape, color, size) objects a spec demands; unnamed colours and all sizes drawn at random."""
    kinds = []
    for item in spec.items:
        for _ in range(item.count):
            color = item.color or COLORS[rng.integers(len(COLORS))]
            kinds.append((item.shape, color, SIZES[rng.integers(len(SIZES))]))
    return kinds


def _distractor_kinds(spec: PromptSpec, rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """n random objects that match no item of the spec."""
    options = [
        (s, c)
        for s in SHAPES
        for c in COLORS
        if not any(i.shape == s and i.color in (None, c) for i in spec.items)
    ]
    picks = [options[rng.integers(len(options))] for _ in range(n)]
    return [(s, c, SIZES[rng.integers(len(SIZES))]) for s, c in picks]


def _reads_clearly(scene: Scene, spec: PromptSpec) -> bool:
    """The (unique) position witnesses must be displaced at least as much along the named axis."""
    if spec.category != "position":
        return True
    (a,) = [o for o in scene.objects if spec.items[0].matches(o)]
    (b,) = [o for o in scene.objects if spec.items[1].matches(o)]
    return reads_clearly(a, b, spec.relation or "")


def sample_scene_for(
    spec: PromptSpec | str, rng: np.random.Generator, canvas: int = DEFAULT_CANVAS, distractors: bool = True
) -> Scene:
    """A random scene that satisfies the spec (see the module docstring for the distractor policy)."""
    spec, rng = as_spec(spec), as_generator(rng)
    for _ in range(RESTARTS):
        kinds = _required_kinds(spec, rng)
        n_extra = int(rng.integers(0, MAX_OBJECTS - len(kinds) + 1)) if distractors else 0
        scene = place_objects(kinds + _distractor_kinds(spec, rng, n_extra), rng, canvas)
        if scene is not None and _reads_clearly(scene, spec) and satisfies(scene, spec):
            return scene
    raise RuntimeError(f"could not sample a scene for {spec.text!r} on a {canvas}x{canvas} canvas")
