"""Edits applied to scenes: the concrete semantics of `unigap.world.edits`' grammar.

Why separate: the grammar and the distance are abstract (objects and relations); editing a `Scene` places
added and moved objects at random valid positions so the result renders, which needs the renderer and, for a
picture, the verifier's reading of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from PIL import Image

from unigap.errors import UserError
from unigap.world.edits import (EDIT_KINDS, Edit, apply_to_objects, as_edit, candidate_edits, diff, distance,
                                parse_instruction, parse_reflection)
from unigap.world.prompts import PromptSpec, as_spec
from unigap.world.render import render
from unigap.world.scene import (
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    as_generator,
    place_object,
    reads_clearly,
    relation_holds,
)
from unigap.world.verify import as_rgb_array, detect


def apply_edit(scene: Scene, edit: Edit | str, rng: np.random.Generator) -> Scene:
    """The scene after the edit (or instruction); added and moved objects go to random valid positions (added ones
    get a random size, the other size if it does not fit, and a random colour when the edit names none). `UserError`
    when the edit does not apply (a reference matches nothing, a fifth object, or no free position)."""
    rng, edit = as_generator(rng), as_edit(edit)
    objects = list(scene.objects)
    target = edit.target.find(objects) if edit.target else None
    anchor = edit.anchor.find(objects) if edit.anchor else None
    if (edit.target and target is None) or (edit.anchor and anchor is None):
        raise UserError(f"{edit.text!r} names no object of this scene")
    if edit.kind == "recolour":
        objects[target] = replace(objects[target], color=edit.color)
        return Scene(scene.canvas, tuple(objects))
    if edit.kind == "remove":
        del objects[target]
        return Scene(scene.canvas, tuple(objects))
    if edit.kind == "move":
        if target == anchor:
            raise UserError(f"{edit.text!r} moves an object relative to itself")
        moving = objects.pop(target)
        kinds = [(moving.shape, moving.color, moving.size)]
        anchor_obj = scene.objects[anchor]
    else:
        if len(objects) >= MAX_OBJECTS:
            raise UserError(f"{edit.text!r}: a scene holds at most {MAX_OBJECTS} objects")
        color = edit.color or COLORS[rng.integers(len(COLORS))]
        first = int(rng.integers(len(SIZES)))
        kinds = [(edit.shape, color, SIZES[(first + i) % len(SIZES)]) for i in range(len(SIZES))]
        anchor_obj = objects[anchor] if anchor is not None else None
    margin = scene.geometry.margin

    def accept(obj: SceneObject) -> bool:
        if anchor_obj is None:
            return True
        return relation_holds(obj, anchor_obj, edit.relation, margin) and reads_clearly(obj, anchor_obj, edit.relation)

    placed = next((p for kind in kinds if (p := place_object(kind, objects, rng, scene.canvas, accept, tries=300))), None)
    if placed is None:
        raise UserError(f"{edit.text!r}: no free position in this scene")
    return Scene(scene.canvas, (*objects, placed))


def edit_picture(image: np.ndarray | Image.Image, instruction: str, rng: np.random.Generator) -> np.ndarray:
    """The exact edit of a clean picture: its objects as the verifier reads them, the instruction applied
    (`apply_edit`), the result rendered. The picture is kept when the instruction does not apply, or is the stop
    answer (`parse_reflection`); `UserError` for text outside the grammar or a picture holding an object of no shape
    or more than `MAX_OBJECTS` (it cannot be redrawn). An editor to compare a model's edits with. The result is
    always a new array."""
    rng = as_generator(rng)
    canvas = image.size[0] if isinstance(image, Image.Image) else np.asarray(image).shape[0]
    array = as_rgb_array(image, canvas)
    detected = detect(array, canvas)
    unknown = [f"a {o.color} blob" for o in detected if o.shape not in SHAPES]
    if unknown:
        raise UserError(f"edit_picture redraws clean pictures; this one holds {', '.join(unknown)} of no known shape")
    if len(detected) > MAX_OBJECTS:
        raise UserError(f"edit_picture redraws clean pictures; this one holds {len(detected)} objects, more than a "
                        f"scene's {MAX_OBJECTS}")
    scene = Scene(canvas, tuple(SceneObject(o.shape, o.color, o.size, int(o.x), int(o.y)) for o in detected))
    reading = parse_reflection(instruction)
    if reading.stop:
        return array.copy()  # the stop answer: nothing to change
    edit = reading.edit or parse_instruction(instruction)  # (text outside the grammar: its one-line error)
    try:
        return render(apply_edit(scene, edit, rng))
    except UserError:
        return array.copy()


def drawable_fix(scene: Scene, spec: PromptSpec | str) -> Edit | None:
    """The first edit of the exact diff (`diff`) that can be drawn on the scene's canvas, None when none can (or
    the prompt holds). `diff` reasons on objects, not pixels: moving a large shape above one near the top edge can
    be a fix no position allows, which no editor, exact or learned, carries out. Placements are tried with a fixed
    generator, so the answer is the same on every call."""
    spec = as_spec(spec)
    for edit in diff(scene.objects, spec, scene.geometry.margin):
        try:
            apply_edit(scene, edit, np.random.default_rng(0))
        except UserError:
            continue
        return edit
    return None


def break_scene(
    scene: Scene, spec: PromptSpec | str, rng: np.random.Generator, accept: Callable[[Scene], bool] | None = None
) -> tuple[Scene, Edit]:
    """A scene one edit away from satisfying `spec` (distance 1, with a fix the grammar can name, and
    `accept`ed), made by one random edit of `scene`, and that edit. The edit's kind is drawn uniformly
    among the kinds that can break this scene, then edits of that kind are tried in random order.
    `UserError` if none breaks it."""
    spec, rng = as_spec(spec), as_generator(rng)
    margin = scene.geometry.margin
    by_kind: dict[str, list[Edit]] = {}
    for edit in candidate_edits(scene.objects):
        by_kind.setdefault(edit.kind, []).append(edit)
    kinds = [k for k in EDIT_KINDS if k in by_kind]
    for k in rng.permutation(len(kinds)):
        options = by_kind[kinds[k]]
        for i in rng.permutation(len(options)):
            after = apply_to_objects(scene.objects, options[i])  # cheap abstract test before placing objects
            if after is None or distance(after, spec, margin) != 1:
                continue
            try:
                broken = apply_edit(scene, options[i], rng)
            except UserError:
                continue
            if accept is not None and not accept(broken):
                continue
            if distance(broken.objects, spec, margin) == 1 and diff(broken.objects, spec, margin):
                return broken, options[i]
    raise UserError(f"no single edit breaks this scene for {spec.text!r}")
