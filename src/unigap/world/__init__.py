"""ShapeWorld: a procedural world of coloured shapes with exact ground truth.

It is the toolkit's judge: scenes and their renders (`scene`, `render`), GenEval-like prompts with exact
semantics (`prompts`), questions with exact answers and the closed vocabulary (`questions`), a verifier
that parses imperfect images (`verify`), and deterministic datasets (`dataset`).
"""

from unigap.world.dataset import (
    SPLITS,
    Record,
    load_dataset,
    sample_records,
    scene_split,
    split_prompts,
    write_dataset,
)
from unigap.world.prompts import (
    CATEGORIES,
    Item,
    PromptSpec,
    all_specs,
    check,
    parse_prompt,
    sample_scene_for,
    sample_spec,
    satisfies,
)
from unigap.world.questions import (
    QUESTION_KINDS,
    Question,
    candidate_questions,
    describe,
    judge,
    judge_question,
    question_kinds,
    sample_question,
    sample_questions,
    tokenize_words,
    vocabulary,
)
from unigap.world.render import BACKGROUND, PALETTE, render, render_pil
from unigap.world.scene import (
    COLORS,
    DEFAULT_CANVAS,
    RELATIONS,
    SHAPES,
    SIZES,
    Geometry,
    Scene,
    SceneObject,
    relation_holds,
    sample_scene,
)
from unigap.world.verify import Detected, Verdict, detect, load_image, verify

__all__ = [
    "BACKGROUND",
    "CATEGORIES",
    "COLORS",
    "DEFAULT_CANVAS",
    "PALETTE",
    "QUESTION_KINDS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Detected",
    "Geometry",
    "Item",
    "PromptSpec",
    "Question",
    "Record",
    "Scene",
    "SceneObject",
    "Verdict",
    "all_specs",
    "candidate_questions",
    "check",
    "describe",
    "detect",
    "judge",
    "judge_question",
    "load_dataset",
    "load_image",
    "parse_prompt",
    "question_kinds",
    "relation_holds",
    "render",
    "render_pil",
    "sample_question",
    "sample_questions",
    "sample_records",
    "sample_scene",
    "sample_scene_for",
    "sample_spec",
    "satisfies",
    "scene_split",
    "split_prompts",
    "tokenize_words",
    "verify",
    "vocabulary",
    "write_dataset",
]
