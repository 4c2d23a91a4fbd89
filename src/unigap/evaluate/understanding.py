"""Understanding accuracy: greedy answers to ShapeWorld questions about held-out scenes, exact match.

Why exact match after normalisation: every question has one exact answer in a closed vocabulary, so a
string comparison is the whole judge. Normalising by words (`tokenize_words`: lowercase, words and
punctuation marks as separate tokens, joined by one space) makes "objects: a" and "objects : a" equal,
which matters because word-level tokenizers decode with spaces around punctuation; trailing punctuation
is dropped so "Yes." counts as "yes".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.progress import map_items
from unigap.evaluate.stats import summarize_grouped
from unigap.data.understanding import UserItem
from unigap.evaluate.vqa import vqa_score
from unigap.world import QUESTION_KINDS, Question, Scene, render, sample_question, tokenize_words

QUESTION_STREAM = 1  # rng stream for questions, apart from the scene sampler's
DEFAULT_MAX_NEW_TOKENS = 48  # the longest answer (a four-object description) is ~30 tokens


class Answerer(Protocol):
    def answer(
        self, images: Sequence[np.ndarray], questions: Sequence[str], max_new_tokens: int, temperature: float
    ) -> list[str]: ...


@dataclass(frozen=True)
class UnderstandingItem:
    """One held-out scene, its render, and one question about it with the exact answer."""

    index: int
    scene: Scene
    image: np.ndarray
    question: Question


def understanding_items(
    n: int, seed: int, data_seed: int = 0, pairs: Sequence[tuple[Any, Scene]] | None = None, split: str = "test"
) -> list[UnderstandingItem]:
    """n questions (kind uniform, answers balanced: `sample_question`) about held-out scenes, seeded.

    `pairs` (from `held_out_pairs(n, seed, data_seed)`) may be passed to reuse already sampled scenes.
    """
    if pairs is None:
        pairs = held_out_pairs(n, seed, data_seed, split=split)
    rng = np.random.default_rng([seed, QUESTION_STREAM])
    return [
        UnderstandingItem(i, scene, render(scene), sample_question(scene, rng)) for i, (_, scene) in enumerate(pairs)
    ]


SENTENCE_PUNCTUATION = frozenset(".,!?;:")  # what ends a sentence; "50%" or "C++" keep their symbols


def normalize_answer(text: str) -> str:
    """Lowercase words and punctuation marks joined by single spaces, trailing sentence punctuation removed."""
    words = tokenize_words(text)
    while words and words[-1] in SENTENCE_PUNCTUATION:
        words.pop()
    return " ".join(words)


def answer_items(
    um: Answerer,
    items: Sequence[UnderstandingItem | UserItem],
    batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per-item records: kind, question, expected and given answer, and whether they match; for users' items
    (`unigap.data.understanding`, several reference answers) also the VQA soft score `vqa_score`."""

    def batch(_: int, chunk: list[UnderstandingItem | UserItem]) -> list[str]:
        return um.answer([it.image for it in chunk], [it.question.text for it in chunk],
                         max_new_tokens=max_new_tokens, temperature=0.0)

    answers = map_items(items, batch_size, batch, "understanding", progress)
    records = []
    for item, given in zip(items, answers, strict=True):
        records.append(
            {
                "index": item.index,
                "kind": item.question.kind,
                "question": item.question.text,
                "expected": item.question.answer,
                "answer": given,
                "correct": normalize_answer(given) == normalize_answer(item.question.answer),
            }
        )
        references = getattr(item.question, "answers", None)
        if references is not None:
            records[-1] |= {"answers": list(references), "vqa_score": vqa_score(given, references)}
    return records


def understanding_metrics(records: Sequence[dict[str, Any]], kinds: Sequence[str] = QUESTION_KINDS) -> dict[str, Any]:
    """Accuracy overall and per question kind (every kind of `kinds` listed; an absent kind has n = 0); with
    users' items also the VQA soft score, overall and per kind."""
    out = summarize_grouped(records, "correct", "accuracy", "kind", kinds, "by_kind")
    if records and "vqa_score" in records[0]:
        out["vqa_score"] = summarize_grouped(records, "vqa_score", "vqa_score", "kind", kinds, "by_kind")
    return out
