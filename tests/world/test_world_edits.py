"""Edit instructions: the grammar's parser, its exact semantics on scenes, and the diff a reflection is judged by."""

from __future__ import annotations

import numpy as np
import pytest

from unigap.errors import UserError
from unigap.world import (
    CATEGORIES,
    NO_EDIT,
    Edit,
    Item,
    PromptSpec,
    Ref,
    Scene,
    SceneObject,
    apply_edit,
    break_scene,
    diff,
    distance,
    drawable_fix,
    is_valid_fix,
    parse_instruction,
    parse_reflection,
    reflection_answer,
    sample_scene_for,
    sample_spec,
    satisfies,
)
from unigap.world.edits import apply_to_objects, candidate_edits

MARGIN = 6


def obj(shape: str, color: str, x: int, y: int, size: str = "small") -> SceneObject:
    return SceneObject(shape, color, size, x, y)


@pytest.mark.parametrize(
    ("text", "edit"),
    [
        ("make the red circle blue", Edit("recolour", Ref("circle", "red"), color="blue")),
        ("Make the circle blue.", Edit("recolour", Ref("circle"), color="blue")),
        ("make the red object green", Edit("recolour", Ref(None, "red"), color="green")),
        ("add a green square", Edit("add", color="green", shape="square")),
        ("add a triangle", Edit("add", shape="triangle")),
        ("add an orange circle to the left of the blue square",
         Edit("add", color="orange", shape="circle", relation="left of", anchor=Ref("square", "blue"))),
        ("remove the blue triangle", Edit("remove", Ref("triangle", "blue"))),
        ("move the circle to the left of the square", Edit("move", Ref("circle"), relation="left of", anchor=Ref("square"))),
        ("move the red circle below the object", Edit("move", Ref("circle", "red"), relation="below", anchor=Ref())),
    ],
)
def test_parse_reads_every_form_and_text_inverts_it(text: str, edit: Edit) -> None:
    assert parse_instruction(text) == edit
    assert parse_instruction(edit.text) == edit


@pytest.mark.parametrize(
    "text",
    ["", "no further edit needed", "make the red circle", "paint the circle blue", "add the red circle",
     "add a red object", "remove a blue triangle", "move the circle left of the square", "make the pink circle red",
     "remove the blue triangle and the red square", "add a red circle to the left of a blue square",
     "add an red square", "add a orange circle", "add an triangle"],  # the article as the prompts write it
)
def test_text_outside_the_grammar_is_one_clear_error(text: str) -> None:
    with pytest.raises(UserError, match="not an edit instruction") as caught:
        parse_instruction(text)
    assert "\n" not in str(caught.value) and "no further edit needed" in str(caught.value)


def test_the_stop_answer_is_named_as_such_not_listed_as_expected() -> None:
    with pytest.raises(UserError, match="^'No further edit needed.' is the stop answer, not an edit instruction"):
        parse_instruction("No further edit needed.")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Edit("remove", Ref("blob")), "invalid object reference: unknown shape 'blob'"),
    (lambda: Ref("circle", "pink"), "invalid object reference: unknown color 'pink'"),
])
def test_a_reference_its_text_would_misname_is_refused(make, message: str) -> None:
    """("remove the blob" parses not.)"""
    with pytest.raises(UserError, match=f"^{message}$"):
        make()


@pytest.mark.parametrize(("make", "unused", "text"), [
    (lambda: Edit("recolour", Ref("circle"), color="red", relation="above", anchor=Ref("square")),
     "relation or anchor", "make the circle red"),
    (lambda: Edit("remove", Ref("circle"), color="red"), "color", "remove the circle"),
    (lambda: Edit("move", Ref("circle"), shape="square", relation="above", anchor=Ref("square")), "shape",
     "move the circle above the square"),
])
def test_an_edit_given_a_field_its_kind_does_not_say_is_deprecated(make, unused: str, text: str) -> None:
    """Accepted before (its text leaves the field out): warned of, for scripts that fill every field from one table,
    until a later release refuses it."""
    from unigap.errors import UnigapDeprecationWarning

    with pytest.warns(UnigapDeprecationWarning, match=f"edit takes no {unused}: its text leaves it out, and a later release refuses it"):
        edit = make()
    assert edit.text == text


def test_reflections_are_a_stop_an_edit_or_a_format_failure() -> None:
    assert parse_reflection("No further edit needed.").stop
    for worded in ("No further edit is needed.", "no further edits needed", "No further edit needed, it matches."):
        assert parse_reflection(worded).stop and parse_reflection(worded).format_ok  # (R3: an answer containing it)
    made = parse_reflection("make the red circle blue")
    assert not made.stop and made.format_ok and made.edit == Edit("recolour", Ref("circle", "red"), color="blue")
    broken = parse_reflection("the circle should be blue")
    assert not broken.stop and not broken.format_ok and broken.edit is None


def test_references_name_the_first_match_left_to_right() -> None:
    scene = Scene(64, (obj("circle", "red", 40, 10), obj("circle", "red", 10, 40), obj("square", "blue", 50, 50)))
    recoloured = apply_edit(scene, parse_instruction("make the red circle green"), np.random.default_rng(0))
    assert [o.color for o in recoloured.objects] == ["green", "red", "blue"]  # the one at x = 10
    removed = apply_edit(scene, parse_instruction("remove the object"), np.random.default_rng(0))
    assert [o.x for o in removed.objects] == [40, 50]
    with pytest.raises(UserError, match="names no object"):
        apply_edit(scene, parse_instruction("remove the triangle"), np.random.default_rng(0))


def test_applying_adds_and_moves_keeps_a_valid_scene_with_the_relation() -> None:
    rng = np.random.default_rng(1)
    scene = Scene(64, (obj("square", "blue", 32, 32),))
    for relation in ("left of", "right of", "above", "below"):
        added = apply_edit(scene, Edit("add", color="red", shape="circle", relation=relation, anchor=Ref("square")), rng)
        assert satisfies(added, PromptSpec("position", (Item("circle", "red"), Item("square", "blue")), relation))
        moved = apply_edit(added, Edit("move", Ref("circle"), relation="above" if relation != "above" else "below",
                                       anchor=Ref("square")), rng)
        assert len(moved.objects) == 2
    full = Scene(64, tuple(obj("circle", "red", x, y) for x, y in ((10, 10), (50, 10), (10, 50), (50, 50))))
    with pytest.raises(UserError, match="at most 4"):
        apply_edit(full, Edit("add", shape="square"), rng)


def test_distance_is_zero_exactly_when_the_prompt_holds() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        spec = sample_spec(rng)
        scene = sample_scene_for(spec, rng)
        other = sample_spec(rng, spec.category)
        assert distance(scene.objects, spec, MARGIN) == 0
        assert (distance(scene.objects, other, MARGIN) == 0) == satisfies(scene, other)


@pytest.mark.parametrize("category", CATEGORIES)
def test_break_then_every_fix_of_the_diff_round_trips(category: str) -> None:
    """In every category: a scene broken by one edit is one edit away; each edit of its diff parses back from
    its text, is a valid fix, and applied to the scene makes the prompt hold."""
    rng = np.random.default_rng(CATEGORIES.index(category))
    applied = 0
    for _ in range(40):
        spec = sample_spec(rng, category)
        broken, _ = break_scene(sample_scene_for(spec, rng), spec, rng)
        assert distance(broken.objects, spec, MARGIN) == 1 and not satisfies(broken, spec)
        fixes = diff(broken.objects, spec, MARGIN)
        assert fixes and reflection_answer(broken.objects, spec, MARGIN) == fixes[0].text
        for fix in fixes:
            assert parse_instruction(fix.text) == fix and is_valid_fix(broken.objects, spec, fix, MARGIN)
            try:
                fixed = apply_edit(broken, fix, rng)
            except UserError:  # an add that finds no free position in this scene
                continue
            applied += 1
            assert satisfies(fixed, spec), (spec.text, fix.text, broken)
    assert applied >= 40


def test_an_add_to_a_full_picture_is_no_fix_since_no_scene_can_take_it() -> None:
    """A fifth object: `apply_edit` refuses it, so the diff and the critique's validity must not count it."""
    from unigap.world import parse_prompt

    four = Scene(64, (SceneObject("square", "blue", "small", 10, 10), SceneObject("circle", "red", "small", 10, 50),
                      SceneObject("circle", "green", "small", 50, 10), SceneObject("circle", "purple", "small", 50, 50)))
    spec, add = parse_prompt("a triangle"), parse_instruction("add a triangle")
    fixes = diff(four.objects, spec, four.geometry.margin)
    assert fixes and not any(e.kind == "add" for e in fixes)  # removing or recolouring still help
    assert not is_valid_fix(four.objects, spec, add, four.geometry.margin)
    with pytest.raises(UserError, match="at most 4 objects"):
        apply_edit(four, add, 0)


def test_the_diff_holds_every_edit_that_lowers_the_distance_and_only_those() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        spec = sample_spec(rng)
        broken, _ = break_scene(sample_scene_for(spec, rng), spec, rng)
        before = distance(broken.objects, spec, MARGIN)
        lowering = {e for e in candidate_edits(broken.objects)
                    if (after := apply_to_objects(broken.objects, e)) is not None and distance(after, spec, MARGIN) < before}
        assert set(diff(broken.objects, spec, MARGIN)) == lowering


def test_worked_examples() -> None:
    red_circle = PromptSpec("colors", (Item("circle", "red"),))
    objects = [obj("circle", "blue", 10, 10), obj("square", "red", 40, 40)]
    assert diff(objects, red_circle, MARGIN)[0].text == "make the blue circle red"
    assert "add a red circle" in {e.text for e in diff(objects, red_circle, MARGIN)}
    assert reflection_answer([obj("circle", "red", 10, 10)], red_circle, MARGIN) == NO_EDIT
    two = PromptSpec("counting", (Item("square", "green", 2),))
    three = [obj("square", "green", 10, 10), obj("square", "green", 40, 10), obj("square", "green", 10, 40)]
    assert {e.kind for e in diff(three, two, MARGIN)} == {"recolour", "remove"}
    left = PromptSpec("position", (Item("circle", "red"), Item("square", "blue")), "left of")
    wrong_side = [obj("square", "blue", 10, 30), obj("circle", "red", 50, 30)]
    assert {"move the blue square to the right of the red circle", "move the red circle to the left of the blue square",
            "add a red circle to the left of the blue square"} <= {e.text for e in diff(wrong_side, left, MARGIN)}
    # five objects are clutter: one removal fixes it when the witness survives it
    clutter = [obj("circle", "red", 5 + 12 * i, 30) for i in range(5)]
    assert distance(clutter, red_circle, MARGIN) == 1
    assert {e.kind for e in diff(clutter, red_circle, MARGIN)} == {"remove"}


@pytest.mark.parametrize(("args", "message"), [
    (("recolor", Ref("circle", "red"), "blue"), "unknown edit kind 'recolor'"),
    (("recolour", Ref("circle", "red"), "magenta"), "invalid recolour edit: unknown color 'magenta'"),
    (("add",), "invalid add edit: needs its shape"),
    (("move", Ref("circle")), "invalid move edit: needs its relation; needs its anchor"),
    (("add", None, None, "circle", "left of"), "a relation and its anchor go together"),
])
def test_an_edit_the_grammar_cannot_say_is_refused(args: tuple, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Edit(*args)


def test_edit_picture_returns_a_new_array_and_reads_pil_images() -> None:
    from PIL import Image

    from unigap.world import edit_picture, parse_prompt, render, verify

    rng = np.random.default_rng(0)
    picture = render(sample_scene_for(parse_prompt("a red circle"), rng))
    kept = edit_picture(picture, "remove the green triangle", rng)  # refers to nothing: the picture is kept
    assert kept is not picture and np.array_equal(kept, picture)
    stopped = edit_picture(picture, NO_EDIT, rng)  # the reflection's stop answer (was refused as no edit)
    assert stopped is not picture and np.array_equal(stopped, picture)
    recoloured = edit_picture(Image.fromarray(picture).convert("RGBA"), "make the red circle blue", rng)
    assert verify(recoloured, "a blue circle").satisfied and not verify(recoloured, "a red circle").satisfied


def test_edit_picture_refuses_clutter_it_cannot_redraw_as_a_scene() -> None:
    from unigap.world import Scene, SceneObject, edit_picture, render

    four = render(Scene(64, tuple(SceneObject("circle", "red", "small", 8 + 16 * i, 16) for i in range(4))))
    one = render(Scene(64, (SceneObject("square", "blue", "small", 32, 48),)))
    background = render(Scene(64, ()))
    five = np.where((one != background).any(axis=-1, keepdims=True), one, four)
    with pytest.raises(UserError, match="this one holds 5 objects, more than a scene's 4"):
        edit_picture(five, "make the blue square red", np.random.default_rng(0))


def test_the_drawable_fix_skips_a_fix_the_canvas_has_no_room_for() -> None:
    """A large triangle above a circle 11 pixels from the top edge would need a centre above the canvas: the diff
    names that move first, and the drawable fix moves the circle instead."""
    scene = Scene(64, (SceneObject("triangle", "red", "large", 21, 14),
                       SceneObject("circle", "purple", "small", 52, 11)))
    prompt = "a red triangle above a purple circle"
    first = reflection_answer(scene.objects, prompt, scene.geometry.margin)
    assert first == "move the red triangle above the purple circle"
    fix = drawable_fix(scene, prompt)
    assert fix is not None and fix.text == "move the purple circle below the red triangle"
    assert satisfies(apply_edit(scene, fix, np.random.default_rng(1)), prompt)
    assert drawable_fix(apply_edit(scene, fix, np.random.default_rng(1)), prompt) is None  # nothing left to fix


def test_the_edit_functions_take_instruction_text_and_refuse_other_values_in_one_line() -> None:
    """`apply_edit(scene, "remove the circle", rng)` failed with AttributeError ('str' has no 'target'), and a None
    instruction or reflection inside the parser's lower()."""
    scene = Scene(64, (SceneObject("circle", "red", "small", 20, 20), SceneObject("square", "blue", "small", 44, 44)))
    assert [o.shape for o in apply_edit(scene, "remove the circle", 0).objects] == ["square"]
    assert is_valid_fix(scene.objects, "a blue circle", "make the red circle blue", scene.geometry.margin)
    with pytest.raises(UserError, match="expected an Edit or an instruction, got int"):
        apply_edit(scene, 3, 0)
    for parse in (parse_instruction, parse_reflection):
        with pytest.raises(UserError, match="an instruction or reflection must be text, got NoneType"):
            parse(None)
