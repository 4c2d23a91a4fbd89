"""Questions: exact answers on hand-built scenes, only well-defined questions, the judge, the vocabulary."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from unigap.world.edits import NO_EDIT, REFLECT_QUESTION, candidate_edits
from unigap.world import (
    QUESTION_KINDS,
    Scene,
    SceneObject,
    all_specs,
    candidate_questions,
    describe,
    judge,
    parse_prompt,
    question_kinds,
    sample_question,
    sample_scene,
    satisfies,
    tokenize_words,
    vocabulary,
)

SCENE = Scene(
    64,
    (
        SceneObject("circle", "red", "small", 10, 10),
        SceneObject("circle", "red", "large", 30, 45),
        SceneObject("square", "blue", "small", 50, 12),
        SceneObject("triangle", "red", "small", 50, 35),
    ),
)


def answers(scene: Scene, kind: str) -> dict[str, str]:
    return {q.text: q.answer for q in candidate_questions(scene, kind)}


def test_question_kinds():
    assert question_kinds() == list(QUESTION_KINDS)
    assert question_kinds() == ["color", "shape", "size", "count", "exists", "position", "describe", "judge"]


def test_attribute_questions_only_about_unique_referents():
    assert answers(SCENE, "color") == {
        "What color is the square?": "blue",
        "What color is the triangle?": "red",
    }
    assert answers(SCENE, "shape") == {"What shape is the blue object?": "square"}
    assert answers(SCENE, "size") == {
        "What size is the blue square?": "small",
        "What size is the red triangle?": "small",
    }


def test_count_and_exists_answers():
    count = answers(SCENE, "count")
    assert count["How many objects are there?"] == "four"
    assert count["How many circles are there?"] == "two"
    assert count["How many triangles are there?"] == "one"
    assert count["How many red objects are there?"] == "three"
    assert count["How many green objects are there?"] == "zero"
    assert count["How many red circles are there?"] == "two"
    assert count["How many blue triangles are there?"] == "zero"
    assert len(count) == 1 + 3 + 6 + 18
    exists = answers(SCENE, "exists")
    assert exists["Is there a circle?"] == "yes"
    assert exists["Is there a red triangle?"] == "yes"
    assert exists["Is there an orange circle?"] == "no"
    assert exists["Is there a blue circle?"] == "no"


def test_position_answers():
    position = answers(SCENE, "position")
    assert position == {
        "Is the blue square to the left of the red triangle?": "no",  # same column
        "Is the blue square to the right of the red triangle?": "no",
        "Is the blue square above the red triangle?": "yes",
        "Is the blue square below the red triangle?": "no",
        "Is the red triangle to the left of the blue square?": "no",
        "Is the red triangle to the right of the blue square?": "no",
        "Is the red triangle above the blue square?": "no",
        "Is the red triangle below the blue square?": "yes",
    }


def test_descriptions_list_objects_left_to_right():
    assert answers(SCENE, "describe") == {
        "Describe the image.": "There are four objects: a small red circle, a large red circle, "
        "a small blue square and a small red triangle."
    }
    single = Scene(64, (SceneObject("triangle", "orange", "large", 40, 20),))
    assert describe(single) == "There is one object: a large orange triangle."
    pair = Scene(
        64,
        (SceneObject("square", "green", "small", 45, 20), SceneObject("circle", "yellow", "large", 15, 40)),
    )
    assert describe(pair) == "There are two objects: a large yellow circle and a small green square."


def test_judge_answer_is_satisfies():
    question = judge(SCENE, parse_prompt("two red circles"))
    assert (question.text, question.answer) == ("Does this image show two red circles?", "yes")
    assert judge(SCENE, parse_prompt("three red circles")).answer == "no"
    rng = np.random.default_rng(0)
    for scene in [SCENE] + [sample_scene(rng) for _ in range(20)]:
        judged = candidate_questions(scene, "judge")
        assert len(judged) == len(all_specs())
        for spec, q in zip(all_specs(), judged):
            assert q.text == f"Does this image show {spec.text}?"
            assert q.answer == ("yes" if satisfies(scene, spec) else "no")


def test_sampled_questions_are_well_defined_and_answer_balanced():
    rng = np.random.default_rng(1)
    kinds, exists_answers = Counter(), Counter()
    for _ in range(400):
        scene = sample_scene(rng)
        q = sample_question(scene, rng)
        kinds[q.kind] += 1
        assert q in candidate_questions(scene, q.kind)
        if q.kind == "color":  # "the circle" must be the only circle
            shape = q.text.split()[-1].rstrip("?")
            assert sum(o.shape == shape for o in scene.objects) == 1
        exists_answers[sample_question(scene, rng, "exists").answer] += 1
    assert set(kinds) == set(QUESTION_KINDS)
    assert 0.4 < exists_answers["yes"] / 400 < 0.6
    one_object = Scene(64, (SceneObject("circle", "red", "small", 20, 20),))
    with pytest.raises(ValueError, match="no well-defined 'position' question"):
        sample_question(one_object, rng, "position")


def test_tokenize_words():
    assert tokenize_words("There are two objects: a small red circle, and a cube.") == [
        "there",
        "are",
        "two",
        "objects",
        ":",
        "a",
        "small",
        "red",
        "circle",
        ",",
        "and",
        "a",
        "cube",
        ".",
    ]
    assert tokenize_words("Is it 12?") == ["is", "it", "12", "?"]


def test_vocabulary_covers_every_generated_text_and_nothing_else():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab)) and vocab == vocabulary()
    used = set()
    for spec in all_specs():
        used.update(tokenize_words(spec.text))
    rng = np.random.default_rng(2)
    for _ in range(200):
        scene = sample_scene(rng)
        questions = [q for kind in QUESTION_KINDS[:-1] for q in candidate_questions(scene, kind)]
        questions += [q for kind in QUESTION_KINDS[:-1] for q in candidate_questions(scene, kind, form="sentence")]
        questions += [judge(scene, all_specs()[i]) for i in rng.integers(len(all_specs()), size=5)]
        for q in questions:
            used.update(tokenize_words(q.text) + tokenize_words(q.answer))
        spec = all_specs()[rng.integers(len(all_specs()))]
        used.update(tokenize_words(REFLECT_QUESTION.format(prompt=spec.text)))
        used.update(w for edit in candidate_edits(scene.objects) for w in tokenize_words(edit.text))
    used.update(tokenize_words(NO_EDIT))
    assert used <= set(vocab), sorted(used - set(vocab))
    assert set(vocab) <= used, sorted(set(vocab) - used)  # no word the generators never produce


def test_an_empty_scene_is_one_clear_error_not_an_index_error():
    """`break_scene` empties a single-object scene (its fix adds the object back); nothing can be asked about it."""
    from unigap.world import apply_edit, parse_instruction, sample_questions

    one = Scene(64, (SceneObject("circle", "red", "small", 20, 20),))
    empty = apply_edit(one, parse_instruction("remove the red circle"), 0)
    with pytest.raises(ValueError, match="describe needs a scene with at least one object, got an empty one"):
        describe(empty)
    with pytest.raises(ValueError, match="sample_question needs a scene with at least one object"):
        sample_questions(empty, np.random.default_rng(0), 2)


def test_a_kind_without_a_sentence_form_says_so():
    """(It said no well-defined question existed for the scene, which blamed the scene.)"""
    scene = sample_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="'describe' questions have no sentence form; those that do: color, count"):
        sample_question(scene, np.random.default_rng(0), kind="describe", form="sentence")
