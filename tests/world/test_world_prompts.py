"""Prompts: texts, exact parsing, serialisation, sampling, and the ground-truth semantics."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from unigap.errors import UserError
from unigap.world import (
    CATEGORIES,
    Item,
    PromptSpec,
    Scene,
    SceneObject,
    all_specs,
    parse_prompt,
    sample_scene_for,
    sample_spec,
    satisfies,
)


def test_prompt_space_per_category():
    sizes = {c: len(all_specs(c)) for c in CATEGORIES}
    # 3 shapes, 6 colours -> 18 coloured shapes; ordered pairs.
    assert sizes == {
        "single_object": 3,
        "two_objects": 6,
        "counting": 72,
        "colors": 18,
        "position": 18 * 17 * 4,
        "color_attribution": 18 * 10,
    }
    texts = [s.text for s in all_specs()]
    assert len(set(texts)) == len(texts)  # text determines the spec


def test_example_texts():
    assert PromptSpec("colors", (Item("circle", "red"),)).text == "a red circle"
    assert PromptSpec("single_object", (Item("circle"),)).text == "a circle"
    assert PromptSpec("counting", (Item("triangle", "yellow", 3),)).text == "three yellow triangles"
    assert PromptSpec("counting", (Item("square", "orange", 1),)).text == "one orange square"
    spec = PromptSpec("position", (Item("circle", "purple"), Item("square", "orange")), "left of")
    assert spec.text == "a purple circle to the left of an orange square"
    spec = PromptSpec("color_attribution", (Item("square", "blue"), Item("triangle", "green")))
    assert spec.text == "a blue square and a green triangle"


def test_parse_inverts_text_for_every_spec():
    for spec in all_specs():
        assert parse_prompt(spec.text) == spec
        assert PromptSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_prompt("  A Red   Circle. ") == PromptSpec("colors", (Item("circle", "red"),))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a pink circle",
        "a red hexagon",
        "five red circles",
        "a red circle and a red circle",
        "a circle and a circle",
        "a red circle to the left of a red circle",
        "a red circle near a blue square",
        "an red circle",
        "a red circles",
    ],
)
def test_unparseable_prompts_raise_user_error(text):
    with pytest.raises(UserError, match="cannot parse prompt"):
        parse_prompt(text)


def test_invalid_specs_raise_user_error():
    with pytest.raises(UserError, match="colors must differ"):
        PromptSpec("color_attribution", (Item("circle", "red"), Item("square", "red")))
    with pytest.raises(UserError, match="must not name a color"):
        PromptSpec("single_object", (Item("circle", "red"),))
    with pytest.raises(UserError, match="relation"):
        PromptSpec("position", (Item("circle", "red"), Item("square", "blue")))
    with pytest.raises(UserError, match="malformed"):
        PromptSpec.from_dict({"category": "colors"})
    for count in (1e999, 2.5):  # (an OverflowError; a count cut to 2)
        with pytest.raises(UserError, match="malformed prompt spec.*is not a whole number"):
            PromptSpec.from_dict({"category": "counting", "items": [{"shape": "circle", "count": count}]})


def test_sample_spec_covers_categories_deterministically():
    rng = np.random.default_rng(0)
    cats = Counter(sample_spec(rng).category for _ in range(600))
    assert set(cats) == set(CATEGORIES) and min(cats.values()) > 60
    assert sample_spec(np.random.default_rng(3), "counting") == sample_spec(
        np.random.default_rng(3), "counting"
    )


def test_sampled_scenes_satisfy_their_spec_and_distractors_match_no_item():
    rng = np.random.default_rng(1)
    n_distractors = Counter()
    for category in CATEGORIES:
        for _ in range(150):
            spec = sample_spec(rng, category)
            scene = sample_scene_for(spec, rng)
            assert satisfies(scene, spec)
            required = sum(i.count for i in spec.items)
            extra = [o for o in scene.objects if not any(i.matches(o) for i in spec.items)]
            assert len(scene.objects) - len(extra) == required  # exactly the required objects match
            n_distractors[len(extra)] += 1
            if category == "position":
                (a,) = [o for o in scene.objects if spec.items[0].matches(o)]
                (b,) = [o for o in scene.objects if spec.items[1].matches(o)]
                dx, dy = abs(a.x - b.x), abs(a.y - b.y)
                assert dx >= dy if spec.relation in ("left of", "right of") else dy >= dx
    assert n_distractors[0] > 0 and n_distractors[1] > 0 and n_distractors[3] > 0
    no_extra = sample_scene_for(all_specs("single_object")[0], rng, distractors=False)
    assert len(no_extra.objects) == 1


def _scene(*objects: tuple[str, str, str, int, int]) -> Scene:
    return Scene(64, tuple(SceneObject(*o) for o in objects))


def test_semantics_on_constructed_scenes():
    scene = _scene(
        ("circle", "red", "small", 10, 10),
        ("circle", "red", "large", 30, 45),
        ("square", "blue", "small", 50, 12),
        ("triangle", "red", "small", 50, 35),
    )
    yes = [
        "a circle",
        "a circle and a square",
        "two red circles",
        "one red triangle",
        "a blue square",
        "a red circle to the left of a blue square",
        "a red triangle below a blue square",
        "a red circle and a blue square",
        "a red triangle and a blue square",
        "a triangle and a circle",
    ]
    no = [
        "three red circles",
        "one red circle",
        "a blue circle",
        "a red square",
        "one blue triangle",
        "a blue square to the left of a red circle",
        "a red square and a blue circle",
        "a red triangle to the left of a red circle",
    ]
    for text in yes:
        assert satisfies(scene, parse_prompt(text)), text
    for text in no:
        assert not satisfies(scene, parse_prompt(text)), text
    # position needs *some* witness pair: red circle at x=10 is left of the blue square, x=30 too; the
    # red triangle (x=50, same column) is neither left nor right of it.
    assert not satisfies(scene, parse_prompt("a red triangle to the left of a blue square"))
    assert not satisfies(scene, parse_prompt("a red triangle to the right of a blue square"))


def test_every_public_function_taking_a_prompt_takes_its_text():
    """`as_spec` promised prompt text everywhere; these raised AttributeError on a string ('str' has no 'category')."""
    from unigap.world import break_scene, diff, distance, is_valid_fix, near_misses, reflection_answer, render
    from unigap.world.edits import candidate_edits
    from unigap.world.scoring import image_score

    text, other = "a red circle", "a blue circle"
    spec, other_spec = parse_prompt(text), parse_prompt(other)
    assert near_misses(text) == near_misses(spec)
    scene = sample_scene_for(text, np.random.default_rng(0))
    assert scene == sample_scene_for(spec, np.random.default_rng(0))
    margin = scene.geometry.margin
    for function in (distance, diff, reflection_answer):
        assert function(scene.objects, other, margin) == function(scene.objects, other_spec, margin)
    assert candidate_edits(scene.objects, other) == candidate_edits(scene.objects, other_spec)
    fix = diff(scene.objects, other_spec, margin)[0]
    assert is_valid_fix(scene.objects, other, fix, margin) and is_valid_fix(scene.objects, other_spec, fix, margin)
    assert break_scene(scene, text, np.random.default_rng(1)) == break_scene(scene, spec, np.random.default_rng(1))
    canvas = scene.geometry.canvas
    assert image_score(render(scene), text, canvas) == image_score(render(scene), spec, canvas) == 1.0
