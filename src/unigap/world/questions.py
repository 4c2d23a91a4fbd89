"""Questions about a scene with exact answers, the judge question, and the closed word vocabulary.

Why: understanding is trained and measured on these, and the self-judgement question
"Does this image show {prompt}?" ties understanding to generation; its answer is `satisfies`.

Kinds and when a question is well defined (only well-defined questions are ever generated):

* color     "What color is the circle?"            exactly one circle
* shape     "What shape is the red object?"        exactly one red object
* size      "What size is the red circle?"         exactly one red circle        -> small / large
* count     "How many (red) (circles|objects) are there?"  always               -> zero .. four
* exists    "Is there a (red) circle?"             always                        -> yes / no
* position  "Is the red circle to the left of the blue square?"  exactly one of each -> yes / no
* describe  "Describe the image."                  always -> "There are two objects: a small red circle
                                                   and a large blue square." (objects left to right)
* judge     "Does this image show {prompt}?"       any prompt -> yes / no = satisfies(scene, spec)

Sampling picks a kind, then an answer uniformly among the kind's distinct answers, then a question with
that answer, so answers are balanced (a model cannot score by always saying "no").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from unigap.world.edits import EDIT_WORDS
from unigap.world.prompts import (
    NUMBER_WORDS,
    RELATION_PHRASES,
    PromptSpec,
    as_spec,
    all_specs,
    article,
    plural,
    satisfies,
)
from unigap.world.scene import (COLORS, RELATIONS, SHAPES, SIZES, Scene, SceneObject, as_generator, check_integer,
                                relation_holds)

QUESTION_KINDS: tuple[str, ...] = (
    "color",
    "shape",
    "size",
    "count",
    "exists",
    "position",
    "describe",
    "judge",
)
ALWAYS_DEFINED: frozenset[str] = frozenset({"count", "exists", "describe", "judge"})
# Every question and description is one of these templates with attribute words filled in; `vocabulary`
# is built from them, so a new template cannot silently add a word the tokenizer lacks.
TEMPLATES: dict[str, str] = {
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
    "size": "What size is the {color} {shape}?",
    "count_all": "How many objects are there?",
    "count_shape": "How many {shapes} are there?",
    "count_color": "How many {color} objects are there?",
    "count_both": "How many {color} {shapes} are there?",
    "exists_shape": "Is there {a} {shape}?",
    "exists_both": "Is there {a} {color} {shape}?",
    "position": "Is the {color} {shape} {relation} the {color2} {shape2}?",
    "describe": "Describe the image.",
    "description_one": "There is one object: {objects}.",
    "description_many": "There are {number} objects: {objects}.",
    "judge": "Does this image show {prompt}?",
    "count_sentence": "There are {number} {nouns}.",
    "count_one_sentence": "There is one {noun}.",
}
# Answer forms: the same question answered in one word, or (asked with SENTENCE_REQUEST) in a sentence that
# repeats what it is about: "What color is the circle?" → "red"; "... Answer in a full sentence." → "The
# circle is red." Existence and position sentences say "Yes, there is a red circle." / "No, the red circle
# is not to the left of the blue square." The same facts at two answer lengths.
ANSWER_FORMS: tuple[str, ...] = ("word", "sentence")
SENTENCE_REQUEST = "Answer in a full sentence."
SENTENCE_KINDS: frozenset[str] = frozenset({"color", "shape", "size", "count", "exists", "position"})


@dataclass(frozen=True)
class Question:
    """One question about a scene and its exact answer; a sentence-form question also keeps its one-word
    answer (`short`)."""

    kind: str
    text: str
    answer: str
    form: str = "word"
    short: str = ""

    @property
    def word(self) -> str:
        """The one-word answer (the answer itself in the word form)."""
        return self.short or self.answer

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "text": self.text, "answer": self.answer}
        return out if self.form == "word" else {**out, "form": self.form, "short": self.short}


def question_kinds() -> list[str]:
    """All question kinds, in a fixed order."""
    return list(QUESTION_KINDS)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _object_phrase(obj: SceneObject) -> str:
    return f"{article(obj.size)} {obj.size} {obj.color} {obj.shape}"


def _check_not_empty(scene: Scene, function: str) -> None:
    """An empty scene (what `break_scene` leaves of a single object) has no object to describe or ask about."""
    if not scene.objects:
        raise ValueError(f"{function} needs a scene with at least one object, got an empty one")


def describe(scene: Scene) -> str:
    """The canonical one-sentence description: every object with size, colour, shape, left to right."""
    _check_not_empty(scene, "describe")
    phrases = [_object_phrase(o) for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if len(phrases) == 1:
        return TEMPLATES["description_one"].format(objects=listed)
    return TEMPLATES["description_many"].format(number=NUMBER_WORDS[len(phrases)], objects=listed)


def judge_question(spec: PromptSpec | str) -> str:
    """The self-judgement question for a prompt (a spec, or a ShapeWorld prompt's text)."""
    return TEMPLATES["judge"].format(prompt=as_spec(spec).text)


def judge(scene: Scene, spec: PromptSpec) -> Question:
    """The judge question for (scene, prompt); its answer is defined for every pair: `satisfies`."""
    return Question("judge", judge_question(spec), _yes_no(satisfies(scene, spec)))


def _matching(scene: Scene, shape: str | None = None, color: str | None = None) -> list[SceneObject]:
    return [o for o in scene.objects if shape in (None, o.shape) and color in (None, o.color)]


def _count(scene: Scene, shape: str | None = None, color: str | None = None) -> int:
    return len(_matching(scene, shape, color))


def _unique(scene: Scene, shape: str | None = None, color: str | None = None) -> SceneObject | None:
    found = _matching(scene, shape, color)
    return found[0] if len(found) == 1 else None


def _sentence_count(number: int, noun: str) -> str:
    """'There are two red circles.', 'There is one red circle.', 'There are no red circles.'"""
    if number == 1:
        return TEMPLATES["count_one_sentence"].format(noun=noun)
    return TEMPLATES["count_sentence"].format(number=NUMBER_WORDS[number] if number else "no", nouns=_plural_noun(noun))


def _plural_noun(noun: str) -> str:
    words = noun.split()
    return " ".join([*words[:-1], plural(words[-1])])


def candidate_questions(
    scene: Scene, kind: str, judge_prompts: Sequence[PromptSpec] | None = None, form: str = "word"
) -> list[Question]:
    """Every well-defined question of one kind about the scene, in a fixed order.

    Judge questions range over `judge_prompts` (default: every prompt); a smaller pool makes them
    cheap to sample and lets training keep held-out prompt texts out of its questions. `form` "sentence"
    asks the same questions followed by `SENTENCE_REQUEST`, answered by a full sentence (see `ANSWER_FORMS`;
    describe and judge questions have one form only)."""
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {', '.join(QUESTION_KINDS)}")
    if form not in ANSWER_FORMS:
        raise ValueError(f"unknown answer form {form!r}; expected one of {', '.join(ANSWER_FORMS)}")
    if form == "sentence" and kind not in SENTENCE_KINDS:
        return []
    t = TEMPLATES

    def ask(text: str, answer: str, sentence: str) -> Question:
        if form == "word":
            return Question(kind, text, answer)
        return Question(kind, f"{text} {SENTENCE_REQUEST}", sentence, form, answer)

    if kind == "color":
        unique_shapes = [(s, _unique(scene, shape=s)) for s in SHAPES]
        return [
            ask(t["color"].format(shape=s), o.color, f"The {s} is {o.color}.") for s, o in unique_shapes if o
        ]
    if kind == "shape":
        unique_colors = [(c, _unique(scene, color=c)) for c in COLORS]
        return [
            ask(t["shape"].format(color=c), o.shape, f"The {c} object is {article(o.shape)} {o.shape}.")
            for c, o in unique_colors
            if o
        ]
    unique = [(c, s, o) for c in COLORS for s in SHAPES if (o := _unique(scene, s, c)) is not None]
    if kind == "size":
        return [ask(t["size"].format(color=c, shape=s), o.size, f"The {c} {s} is {o.size}.") for c, s, o in unique]
    if kind == "count":

        def count(template: str, shape: str | None = None, color: str | None = None) -> Question:
            text = t[template].format(shapes=plural(shape or ""), color=color)
            number = _count(scene, shape, color)
            noun = " ".join(w for w in (color, shape or "object") if w)
            return ask(text, NUMBER_WORDS[number], _sentence_count(number, noun))

        return (
            [count("count_all")]
            + [count("count_shape", shape=s) for s in SHAPES]
            + [count("count_color", color=c) for c in COLORS]
            + [count("count_both", s, c) for c in COLORS for s in SHAPES]
        )
    if kind == "exists":

        def exists(template: str, shape: str, color: str | None = None) -> Question:
            noun = f"{color} {shape}" if color else shape
            there = _count(scene, shape, color) > 0
            sentence = f"Yes, there is {article(noun)} {noun}." if there else f"No, there is no {noun}."
            return ask(t[template].format(a=article(noun), color=color, shape=shape), _yes_no(there), sentence)

        return [exists("exists_shape", s) for s in SHAPES] + [exists("exists_both", s, c) for c in COLORS for s in SHAPES]
    if kind == "position":
        margin = scene.geometry.margin
        out = []
        for c1, s1, a in unique:
            for c2, s2, b in unique:
                if a is b:
                    continue
                for r in RELATIONS:
                    holds = relation_holds(a, b, r, margin)
                    phrase = f"the {c1} {s1} is{'' if holds else ' not'} {RELATION_PHRASES[r]} the {c2} {s2}"
                    sentence = f"{'Yes' if holds else 'No'}, {phrase}."
                    text = t["position"].format(color=c1, shape=s1, relation=RELATION_PHRASES[r], color2=c2, shape2=s2)
                    out.append(ask(text, _yes_no(holds), sentence))
        return out
    if kind == "describe":
        return [Question(kind, t["describe"], describe(scene))]
    return [judge(scene, spec) for spec in (all_specs() if judge_prompts is None else judge_prompts)]


def sample_question(
    scene: Scene,
    rng: np.random.Generator,
    kind: str | None = None,
    judge_prompts: Sequence[PromptSpec] | None = None,
    form: str = "word",
) -> Question:
    """One well-defined question, answer-balanced (see module docstring); kind uniform unless given.
    Judge questions draw from `judge_prompts` (see `candidate_questions`). With `form` "sentence" the kinds
    are those that have a sentence form, balanced by their one-word answer."""
    _check_not_empty(scene, "sample_question")
    rng = as_generator(rng)
    if kind is None:
        kinds = [
            k for k in QUESTION_KINDS
            if (form == "word" or k in SENTENCE_KINDS) and (k in ALWAYS_DEFINED or candidate_questions(scene, k))
        ]
        kind = kinds[rng.integers(len(kinds))]
    if form == "sentence" and kind in QUESTION_KINDS and kind not in SENTENCE_KINDS:  # (not "no well-defined one")
        raise ValueError(f"{kind!r} questions have no sentence form; those that do: "
                         f"{', '.join(sorted(SENTENCE_KINDS))}")
    pool = candidate_questions(scene, kind, judge_prompts, form)
    if not pool:
        raise ValueError(f"no well-defined {kind!r} question exists for this scene")
    answers = sorted({q.word for q in pool})
    answer = answers[rng.integers(len(answers))]
    with_answer = [q for q in pool if q.word == answer]
    return with_answer[rng.integers(len(with_answer))]


def sample_questions(scene: Scene, rng: np.random.Generator, n: int) -> list[Question]:
    """n independently sampled questions (duplicates possible)."""
    check_integer("n", n, least=0)
    rng = as_generator(rng)
    return [sample_question(scene, rng) for _ in range(n)]


_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def tokenize_words(text: str) -> list[str]:
    """The word-splitting rule `vocabulary` assumes: lower-case letter runs, digit runs, punctuation marks."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    template_words = re.sub(r"\{\w+\}", " ", " ".join(TEMPLATES.values()))
    fillers = [*COLORS, *SHAPES, *map(plural, SHAPES), *SIZES, *NUMBER_WORDS, *RELATION_PHRASES.values()]
    fillers += ["a", "an", "and", ",", "yes", "no", "is", "not", "there", "the", "this", "image", "object", "objects"]
    texts = [template_words, *fillers, *(spec.text for spec in all_specs()), SENTENCE_REQUEST, *EDIT_WORDS]
    return tuple(sorted({w for text in texts for w in tokenize_words(text)}))


def vocabulary() -> list[str]:
    """Every word that can appear in any prompt, question or answer, sorted (a fixed, deterministic order)."""
    return list(_vocabulary())
