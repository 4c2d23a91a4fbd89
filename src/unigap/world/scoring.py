"""Exact scores for preference pairs: answers against the ground truth, images against the prompt spec.

Why graded scores: DPO needs a *margin* between chosen and rejected, and a 0/1 verdict gives no signal
when both candidates fail (the common case for a weak generator).

* Answers (`answer_score`): both texts are split into words (`tokenize_words`, punctuation dropped,
  lower case). Short answers ("red", "three", "yes") score 1 on an exact word-sequence match, else 0.
  Full-sentence descriptions ("describe" questions) score the token-level F1 of the two word multisets
  (SQuAD-style), so "a small red circle" against "a large red circle" earns partial credit.
* Images (`image_score`): the share of the spec's requirements the verifier finds met. Requirements are
  one per prompt item (>= 1 matching object; exactly n for counting) plus, for position prompts, the
  relation (the full spec). Each requirement is judged by `unigap.world.prompts.check` on a one-item spec,
  so the semantics are the verifier's own; the score is 1 exactly when `verify` says satisfied.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from unigap.world.prompts import Item, PromptSpec, as_spec, check
from unigap.world.questions import tokenize_words
from unigap.world.scene import Geometry
from unigap.world.verify import detect

SENTENCE_KINDS = frozenset({"describe"})


def _words(text: str) -> list[str]:
    return [w for w in tokenize_words(text) if w[0].isalnum()]


def answer_score(answer: str, truth: str, question_kind: str) -> float:
    """1/0 exact word match, or token F1 for full-sentence answers (see module docstring)."""
    got, want = _words(answer), _words(truth)
    if question_kind not in SENTENCE_KINDS:
        return float(got == want)
    overlap = sum((Counter(got) & Counter(want)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(got), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


def _item_spec(item: Item, category: str) -> PromptSpec:
    """A one-item spec that asks for exactly this item (counting keeps its exact count)."""
    if category == "counting":
        return PromptSpec("counting", (item,))
    return PromptSpec("colors" if item.color is not None else "single_object", (Item(item.shape, item.color),))


def image_score(image: np.ndarray | Image.Image, spec: PromptSpec | str, canvas: int) -> float:
    """Share of the spec's requirements met in the image (1.0 iff the verifier is satisfied)."""
    spec, objects = as_spec(spec), detect(image, canvas)
    margin = Geometry.for_canvas(canvas).margin
    met = [check(objects, _item_spec(item, spec.category), margin)[0] for item in spec.items]
    if spec.category == "position":
        met.append(check(objects, spec, margin)[0])
    return sum(met) / len(met)
