"""Judges by name: who decides whether an image shows its prompt.

Contract of a judge: `judge(um, images, specs) -> list[float | None]`, one score in [0, 1] per image in the same
order, higher = better match; `None` = cannot decide (left out and counted). `independent` says whether the judge
is separate from the model under study: only an independent judge can check a self-judge (co-degradation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from unigap.errors import UserError
from unigap.evaluate.generation import ACCEPT_THRESHOLD, self_p_yes
from unigap.world import PromptSpec, verify

JudgeFn = Callable[[Any, Sequence[Image.Image], Sequence[PromptSpec]], list[float | None]]


@dataclass(frozen=True)
class Judge:
    name: str
    fn: JudgeFn
    independent: bool
    graded: bool
    threshold: float  # accept when score >= threshold
    version: int = 1


def _verifier(um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[float | None]:
    return [float(verify(image, spec, canvas=image.size[0]).satisfied) for image, spec in zip(images, specs, strict=True)]


def _self_pyes(um: Any, images: Sequence[Image.Image], specs: Sequence[PromptSpec]) -> list[float | None]:
    return list(self_p_yes(um, images, [s.text for s in specs]))


JUDGES: dict[str, Judge] = {
    judge.name: judge
    for judge in (
        Judge("verifier", _verifier, independent=True, graded=False, threshold=0.5),
        Judge("self-pyes", _self_pyes, independent=False, graded=True, threshold=ACCEPT_THRESHOLD),
    )
}


def get_judge(name: str, independent: bool = False) -> Judge:
    """The registered judge `name`; with `independent`, only judges separate from the model qualify."""
    allowed = [j for j in JUDGES.values() if j.independent or not independent]
    for judge in allowed:
        if judge.name == name:
            return judge
    raise UserError(f"unknown judge {name!r}; expected one of {', '.join(j.name for j in allowed)}")
