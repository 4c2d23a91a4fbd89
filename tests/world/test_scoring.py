"""Exact answer scores and the graded image score (1 exactly when the verifier is satisfied)."""

from __future__ import annotations

import numpy as np
import pytest

from unigap.world.scoring import answer_score, image_score
from unigap.world import BACKGROUND, Scene, SceneObject, render, sample_records, verify
from unigap.world.prompts import parse_prompt


@pytest.mark.parametrize(
    ("answer", "truth", "kind", "score"),
    [
        ("Red.", "red", "color", 1.0),
        ("red circle", "red", "color", 0.0),
        ("three", "three", "count", 1.0),
        ("no", "yes", "exists", 0.0),
        ("There is one object: a small red circle.", "There is one object: a small red circle.", "describe", 1.0),
        (
            "a large blue square",
            "There is one object: a small red circle.",
            "describe",
            2 * (1 / 4) * (1 / 8) / (1 / 4 + 1 / 8),
        ),
        ("square", "There is one object: a small red circle.", "describe", 0.0),
    ],
)
def test_answer_score(answer: str, truth: str, kind: str, score: float) -> None:
    assert answer_score(answer, truth, kind) == pytest.approx(score)


def test_image_score_is_one_iff_verified_and_zero_on_a_blank_image() -> None:
    blank = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    for spec, scene in sample_records(120, 3, "train"):
        image = render(scene)
        assert image_score(image, spec, 64) == 1.0 == float(verify(image, spec).satisfied)
        assert image_score(blank, spec, 64) == 0.0


def test_image_score_gives_partial_credit() -> None:
    red_circle = SceneObject("circle", "red", "large", 16, 32)
    image = render(Scene(64, (red_circle,)))
    assert image_score(image, parse_prompt("a red circle to the left of a blue square"), 64) == pytest.approx(
        1 / 3
    )
    assert image_score(image, parse_prompt("a red circle and a blue square"), 64) == pytest.approx(1 / 2)
    blue_square = SceneObject("square", "blue", "large", 48, 32)
    both = render(Scene(64, (red_circle, blue_square)))
    assert image_score(both, parse_prompt("a red circle to the right of a blue square"), 64) == pytest.approx(
        2 / 3
    )
    assert image_score(both, parse_prompt("two red circles"), 64) == 0.0
