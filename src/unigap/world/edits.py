"""Edit instructions: a small grammar with exact semantics, the edits a picture needs, and applying them.

Why: reflection ("what should change in this image?") and editing ("change it") need an exact answer,
as questions and prompts have one, so a model's instruction can be checked and a scene can be edited.

Grammar (lower case; a trailing period is ignored). A reference names an existing object:
``the [COLOR] SHAPE`` or ``the [COLOR] object`` ("object" matches any shape, also a malformed one), and
points at the *first* object it matches in left-to-right order (the order of `Scene.objects` and of the
verifier's detections).

=========== ============================================= =============================================
kind        text                                          effect
=========== ============================================= =============================================
recolour    ``make REF COLOR``                            the referent takes the new colour
add         ``add a [COLOR] SHAPE [RELATION REF]``        a new object (relation to the reference)
remove      ``remove REF``                                the referent disappears
move        ``move REF RELATION REF``                     the referent moves into the relation
=========== ============================================= =============================================

RELATION is one of "to the left of", "to the right of", "above", "below" (their one definition is in
`unigap.world.scene`). An answer that stops holds `STOP_PHRASE` (R3's rule); the canonical one is `NO_EDIT`.

**Distance** `distance(objects, spec)`: the fewest edits after which the objects satisfy the prompt,
as if every object could be named (a reference names only the first object it matches, so in rare
pictures, such as two purple squares where only the second would do, the true count is higher and no
single edit lowers the distance: the diff is then empty). It is computed in closed form per category (the module's
`_distance_*` functions say how): each missing item costs a recolour (when an object of its shape has
another colour) or an add; a relation costs a move unless an add can carry it; a counting surplus costs
removals; and a picture with more than four objects (`MAX_OBJECTS`) needs removals.
**Diff** `diff(objects, spec)`: every single edit that removes one difference, i.e. lowers the distance
by one; empty when the prompt is satisfied. An instruction is a *valid* fix iff it parses and lowers the
distance (`is_valid_fix`), whatever words it uses to name its objects.

`apply_to_objects` applies an edit abstractly (positions only as far as relations need them; an added
object without a relation is in no relation); `unigap.world.scene_edits` applies one to a `Scene`, so the
result renders.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

from unigap.errors import UnigapDeprecationWarning, UserError
from unigap.world.prompts import RELATION_PHRASES, Item, PromptSpec, article, as_spec, check_text
from unigap.world.scene import COLORS, MAX_OBJECTS, RELATIONS, SHAPES, Placed, relation_holds

NO_EDIT = "no further edit needed"
STOP_PHRASE = "no further edit"  # what an answer must contain to stop (R3)
# R3's reflection question (sen-ye/R3), asked in a fresh context with the image and the target prompt.
REFLECT_QUESTION = (
    "The description of the target image is: {prompt}. How to further edit the provided image to make it "
    "consistent with the target description? Please provide concrete editing instructions in a single "
    "sentence. If no editing operation is needed, answer: no further edit needed."
)
EDIT_WORDS: tuple[str, ...] = (REFLECT_QUESTION.format(prompt=""), NO_EDIT, "make add remove move the object")  # for vocabularies
EDIT_KINDS: tuple[str, ...] = ("recolour", "add", "remove", "move")
ANY_SHAPE = "object"
UNKNOWN = "unknown"  # the shape of a malformed object: it matches no prompt item and no SHAPE reference


@dataclass(frozen=True)
class Thing:
    """An object as edits see it: shape (or "unknown"), colour, size, centre. Built from scene objects,
    detections or damaged objects alike (`things`). An object an edit added or moved into a relation has
    no centre (NaN) but a `pin`: (key of its anchor, relation), and is in no other relation."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    key: int = 0
    pin: tuple[int, str] | None = None


def things(objects: Sequence[Placed]) -> list[Thing]:
    """Objects (scene objects, detections, ...) as `Thing`s, in their given (left-to-right) order;
    `Thing`s are kept as they are."""
    if all(isinstance(o, Thing) for o in objects):
        return list(objects)
    return [Thing(o.shape, o.color, o.size, float(o.x), float(o.y), key=i) for i, o in enumerate(objects)]


INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def related(a: Thing, b: Thing, relation: str, margin: float) -> bool:
    """`relation_holds` for things, where a pinned object is in exactly its pinned relation."""
    if a.pin == (b.key, relation) or b.pin == (a.key, INVERSE[relation]):
        return True
    return relation_holds(a, b, relation, margin)  # False for a NaN centre


@dataclass(frozen=True)
class Ref:
    """``the [color] shape``; shape None means "object" (any shape)."""

    shape: str | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        odd = [f"{name} {value!r}" for name, value, allowed in (("shape", self.shape, SHAPES), ("color", self.color,
               COLORS)) if value is not None and value not in allowed]
        if odd:  # (its text would name what no instruction can: "remove the blob" does not parse)
            raise UserError(f"invalid object reference: unknown {', '.join(odd)}")

    def matches(self, obj: Placed) -> bool:
        return (self.shape is None or obj.shape == self.shape) and (self.color is None or obj.color == self.color)

    @property
    def text(self) -> str:
        return " ".join(["the", *([self.color] if self.color else []), self.shape or ANY_SHAPE])

    def find(self, objects: Sequence[Placed]) -> int | None:
        """Index of the first object the reference matches, or None."""
        return next((i for i, o in enumerate(objects) if self.matches(o)), None)


@dataclass(frozen=True)
class Edit:
    """One instruction of the grammar (see the module docstring), e.g. `Edit("recolour", Ref("circle", "red"),
    color="blue")`, or `parse_instruction(text)`; an edit the grammar cannot say is a `UserError`."""

    kind: str
    target: Ref | None = None  # recolour / remove / move
    color: str | None = None  # recolour: the new colour; add: the new object's colour (None: any)
    shape: str | None = None  # add: the new object's shape
    relation: str | None = None  # move (required), add (optional)
    anchor: Ref | None = None

    def __post_init__(self) -> None:
        needs = _EDIT_FIELDS.get(self.kind)
        if needs is None:
            raise UserError(f"unknown edit kind {self.kind!r}; expected one of {', '.join(EDIT_KINDS)}")
        missing = [name for name in needs if getattr(self, name) is None]
        unused = [name for name in ("target", "color", "shape", "relation", "anchor")  # (its text would drop them)
                  if getattr(self, name) is not None and name not in needs + _OPTIONAL_FIELDS.get(self.kind, ())]
        odd = [f"{name} {value!r}" for name, value, allowed in (("color", self.color, COLORS), ("shape", self.shape,
               SHAPES), ("relation", self.relation, RELATIONS)) if value is not None and value not in allowed]
        if missing or odd or (self.relation is None) != (self.anchor is None):
            problem = "; ".join([*(f"needs its {name}" for name in missing), *(f"unknown {o}" for o in odd)]) \
                or "a relation and its anchor go together"
            raise UserError(f"invalid {self.kind} edit: {problem}")
        if unused:  # (accepted, and left out of its text, before they were refused)
            warnings.warn(f"a {self.kind} edit takes no {' or '.join(unused)}: its text leaves it out, and a later "
                          f"release refuses it", UnigapDeprecationWarning, stacklevel=3)

    @property
    def text(self) -> str:
        relation = f" {RELATION_PHRASES[self.relation]} {self.anchor.text}" if self.relation and self.anchor else ""
        if self.kind == "recolour":
            return f"make {self.target.text} {self.color}"
        if self.kind == "remove":
            return f"remove {self.target.text}"
        if self.kind == "move":
            return f"move {self.target.text}{relation}"
        noun = f"{self.color} {self.shape}" if self.color else str(self.shape)
        return f"add {article(noun)} {noun}{relation}"


_EDIT_FIELDS = {"recolour": ("target", "color"), "add": ("shape",), "remove": ("target",),
                "move": ("target", "relation", "anchor")}
_OPTIONAL_FIELDS = {"add": ("color", "relation", "anchor")}
_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_RELATION = "|".join(re.escape(p) for p in RELATION_PHRASES.values())
_REF = rf"the (?:(?:{_COLOR}) )?(?:{_SHAPE}|{ANY_SHAPE})"
_PATTERNS = {
    "recolour": re.compile(rf"make (?P<target>{_REF}) (?P<color>{_COLOR})"),
    "add": re.compile(rf"add (?P<article>an?) (?:(?P<color>{_COLOR}) )?(?P<shape>{_SHAPE})(?: (?P<relation>{_RELATION}) (?P<anchor>{_REF}))?"),
    "remove": re.compile(rf"remove (?P<target>{_REF})"),
    "move": re.compile(rf"move (?P<target>{_REF}) (?P<relation>{_RELATION}) (?P<anchor>{_REF})"),
}
_PHRASE_RELATION = {phrase: relation for relation, phrase in RELATION_PHRASES.items()}
GRAMMAR_HELP = (
    "expected one of: 'make the red circle blue', 'add a green square [to the left of the red circle]', "
    "'remove the blue triangle', 'move the circle to the left of the square', or 'no further edit needed'"
)


def _normalize(text: str) -> str:
    check_text(text, "an instruction or reflection")
    out = " ".join(text.lower().replace(" .", ".").split())
    return out[:-1].rstrip() if out.endswith(".") else out


def _parse_ref(text: str) -> Ref:
    words = text.split()[1:]  # drop "the"
    shape = None if words[-1] == ANY_SHAPE else words[-1]
    return Ref(shape, words[0] if len(words) == 2 else None)


def parse_instruction(text: str) -> Edit:
    """The edit an instruction names; `UserError` for text outside the grammar, and for a stop answer (`NO_EDIT`:
    `parse_reflection` reads both)."""
    normal = _normalize(text)
    if STOP_PHRASE in normal:
        raise UserError(f"{text!r} is the stop answer, not an edit instruction (parse_reflection reads both)")
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(normal)
        if match is None:
            continue
        groups = match.groupdict()
        if groups.get("article") and groups["article"] != article(groups.get("color") or groups["shape"]):
            break  # "add an red square": the prompts' article rule (`prompts.article`) holds in the grammar too
        relation = _PHRASE_RELATION.get(groups.get("relation") or "")
        anchor = _parse_ref(groups["anchor"]) if groups.get("anchor") else None
        target = _parse_ref(groups["target"]) if groups.get("target") else None
        return Edit(kind, target, groups.get("color"), groups.get("shape"), relation, anchor)
    raise UserError(f"not an edit instruction: {text!r}; {GRAMMAR_HELP}")


@dataclass(frozen=True)
class Reflection:
    """A reflection answer read against the grammar: stop, one edit, or a format failure."""

    text: str
    stop: bool
    edit: Edit | None

    @property
    def format_ok(self) -> bool:
        return self.stop or self.edit is not None


def as_edit(edit: Edit | str) -> Edit:
    """An edit, or the one its instruction text names (as a prompt's text stands for its spec)."""
    if isinstance(edit, str):
        return parse_instruction(edit)
    if not isinstance(edit, Edit):
        raise UserError(f"expected an Edit or an instruction, got {type(edit).__name__}: {edit!r:.60}")
    return edit


def parse_reflection(text: str) -> Reflection:
    """An answer containing "no further edit" → stop (R3's rule: a free-text model words it its own way); an
    instruction of the grammar → its edit; anything else a format failure."""
    if STOP_PHRASE in _normalize(text):
        return Reflection(text, True, None)
    try:
        return Reflection(text, False, parse_instruction(text))
    except UserError:
        return Reflection(text, False, None)


# -- abstract semantics: distance and diff ----------------------------------------------------------


def _placed_in(thing: Thing, anchor: Thing, relation: str) -> Thing:
    """`thing` put into the relation with `anchor` and no other (see `Thing`)."""
    return replace(thing, x=math.nan, y=math.nan, pin=(anchor.key, relation))


def apply_to_objects(objects: Sequence[Placed], edit: Edit) -> list[Thing] | None:
    """The objects after the edit (abstract positions, see the module docstring); None where the edit does not
    apply, as `scene_edits.apply_edit` refuses it too: a reference matches nothing, a move's anchor is its target, or
    an add to a picture that already holds `MAX_OBJECTS`."""
    out = things(objects)
    target = edit.target.find(out) if edit.target else None
    anchor = edit.anchor.find(out) if edit.anchor else None
    if (edit.target and target is None) or (edit.anchor and anchor is None):
        return None
    if edit.kind == "recolour":
        out[target] = replace(out[target], color=edit.color)
    elif edit.kind == "remove":
        del out[target]
    elif edit.kind == "move":
        if target == anchor:
            return None
        out[target] = _placed_in(out[target], out[anchor], edit.relation)
    else:
        if len(out) >= MAX_OBJECTS:
            return None
        key = max((o.key for o in out), default=-1) + 1  # no colour: matches no coloured item
        new = Thing(edit.shape, edit.color or "", "small", math.nan, math.nan, key=key)
        out.append(_placed_in(new, out[anchor], edit.relation) if anchor is not None else new)
    return out


def _excess(count: int) -> int:
    return max(0, count - MAX_OBJECTS)


def _convertible(obj: Placed, item: Item) -> bool:
    """One recolour makes the object match the item."""
    return item.color is not None and obj.shape == item.shape and obj.color != item.color


def _distance_single(objects: Sequence[Placed], item: Item) -> int:
    if any(item.matches(o) for o in objects):
        return _excess(len(objects))
    recolour = any(_convertible(o, item) for o in objects)
    return 1 + _excess(len(objects) + (0 if recolour else 1))


def _distance_pair(objects: Sequence[Placed], items: Sequence[Item]) -> int:
    """two_objects / color_attribution: the items have different shapes, so no object serves both."""
    missing = [item for item in items if not any(item.matches(o) for o in objects)]
    adds = sum(1 for item in missing if not any(_convertible(o, item) for o in objects))
    return len(missing) + _excess(len(objects) + adds)


def _distance_count(objects: Sequence[Placed], item: Item) -> int:
    matches = sum(item.matches(o) for o in objects)
    if matches > item.count:  # removing surplus matches also lowers the object count
        surplus = matches - item.count
        return surplus + _excess(len(objects) - surplus)
    missing = item.count - matches
    adds = missing - min(missing, sum(_convertible(o, item) for o in objects))
    return missing + _excess(len(objects) + adds)


def _distance_position(objects: Sequence[Thing], spec: PromptSpec, margin: float) -> int:
    """Least cost over witness choices: each witness an existing match (0), a recoloured object (1) or
    an added one (1, one more object); a relation between two existing witnesses that fails costs a move."""
    a_item, b_item = spec.items
    relation = spec.relation or ""

    def options(item: Item) -> list[tuple[int | None, int]]:
        own = [(i, 0 if item.matches(o) else 1) for i, o in enumerate(objects)
               if item.matches(o) or _convertible(o, item)]
        return [*own, (None, 1)]  # None: a new object

    best = math.inf
    for a, cost_a in options(a_item):
        for b, cost_b in options(b_item):
            if a is not None and a == b:
                continue
            move = int(a is not None and b is not None and not related(objects[a], objects[b], relation, margin))
            adds = (a is None) + (b is None)
            best = min(best, cost_a + cost_b + move + _excess(len(objects) + adds))
    return int(best)


def distance(objects: Sequence[Placed], spec: PromptSpec | str, margin: float) -> int:
    """The fewest edits after which `objects` satisfy `spec` (0 iff `check` holds); see the module docstring."""
    objects, spec = things(objects), as_spec(spec)
    if spec.category in ("single_object", "colors"):
        return _distance_single(objects, spec.items[0])
    if spec.category in ("two_objects", "color_attribution"):
        return _distance_pair(objects, spec.items)
    if spec.category == "counting":
        return _distance_count(objects, spec.items[0])
    return _distance_position(objects, spec, margin)


def _references(objects: Sequence[Placed]) -> list[Ref]:
    """For each object that some reference picks, its most specific reference (colour + shape first)."""
    refs: dict[int, Ref] = {}
    for shape in (*SHAPES, None):
        for color in (*COLORS, None):
            ref = Ref(shape, color)
            index = ref.find(objects)
            if index is not None:
                refs.setdefault(index, ref)
    return [refs[i] for i in sorted(refs)]


def candidate_edits(objects: Sequence[Placed], spec: PromptSpec | str | None = None) -> list[Edit]:
    """Every edit worth trying on these objects, each object named by its most specific reference.

    Given the prompt, edits that cannot lower its distance are left out: an added object that matches
    none of its items only adds to the count, and a move only changes relations, which only position
    prompts have. The diff is the same either way (a test checks), only cheaper.
    """
    spec, refs = None if spec is None else as_spec(spec), _references(objects)
    edits = [Edit("recolour", ref, color=c) for ref in refs for c in COLORS if c != ref.color]
    edits += [Edit("remove", ref) for ref in refs]
    if spec is None or spec.category == "position":
        edits += [Edit("move", ref, relation=r, anchor=other) for ref in refs for other in refs if other != ref
                  for r in RELATIONS]
    for shape in SHAPES:
        for color in (None, *COLORS):  # "add a circle" before "add a red circle"
            new = Thing(shape, color or "", "small", math.nan, math.nan)
            if spec is not None and not any(item.matches(new) for item in spec.items):
                continue
            edits.append(Edit("add", color=color, shape=shape))
            edits += [Edit("add", color=color, shape=shape, relation=r, anchor=ref) for ref in refs for r in RELATIONS]
    return edits


def is_valid_fix(objects: Sequence[Placed], spec: PromptSpec | str, edit: Edit | str, margin: float) -> bool:
    """Whether the edit (or instruction) applies and removes a difference (lowers the distance)."""
    spec, after = as_spec(spec), apply_to_objects(objects, as_edit(edit))
    return after is not None and distance(after, spec, margin) < distance(objects, spec, margin)


KIND_PREFERENCE = ("recolour", "move", "remove", "add")  # least disruptive first


def diff(objects: Sequence[Placed], spec: PromptSpec | str, margin: float) -> list[Edit]:
    """Every single edit that removes one difference (see the module docstring), least disruptive kind
    first (recolour, move, remove, add), then left to right; empty when the prompt is satisfied."""
    spec = as_spec(spec)
    if distance(objects, spec, margin) == 0:
        return []
    fixes = [e for e in candidate_edits(objects, spec) if is_valid_fix(objects, spec, e, margin)]
    return sorted(fixes, key=lambda e: KIND_PREFERENCE.index(e.kind))  # stable: keeps left-to-right order


def reflection_answer(objects: Sequence[Placed], spec: PromptSpec | str, margin: float) -> str | None:
    """The canonical reflection: `NO_EDIT` when the prompt is satisfied, else the first edit of the diff;
    None when no single edit helps (clutter that no reference can name), where no answer is right."""
    spec = as_spec(spec)
    if distance(objects, spec, margin) == 0:
        return NO_EDIT
    fixes = diff(objects, spec, margin)
    return fixes[0].text if fixes else None
