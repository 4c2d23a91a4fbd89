"""The pretraining corpus: train-split scenes rendered once, with questions drawn per scene.

Everything is drawn from the *train* split (scenes and prompt texts), so evaluation on the test split
measures generalisation. Questions are drawn once, up front: sampling a question costs more than a
training step can afford to wait for on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unigap.world import PromptSpec, Question, Scene, render, sample_question, sample_records, split_prompts

JUDGE_POOL = 16  # prompts a judge question about one scene is drawn from: its own + random train prompts


@dataclass
class Corpus:
    """Scenes with their prompt, render and questions; VQ tokens and reconstructions once a VQ exists."""

    specs: list[PromptSpec]
    scenes: list[Scene]
    renders: np.ndarray  # [S, H, W, 3] uint8
    questions: list[list[Question]]
    tokens: np.ndarray | None = None  # [S, N] int64: VQ ids of the renders
    reconstructions: np.ndarray | None = None  # [S, H, W, 3] uint8: the VQ's decoding of `tokens`

    def __len__(self) -> int:
        return len(self.scenes)


def judge_prompts(spec: PromptSpec, train: tuple[PromptSpec, ...], rng: np.random.Generator) -> list[PromptSpec]:
    """The scene's own prompt (a guaranteed yes) plus random train prompts (mostly no)."""
    others = [train[i] for i in rng.choice(len(train), size=JUDGE_POOL - 1, replace=False)]
    return [spec, *others]


def build_corpus(
    n: int, seed: int, questions_per_scene: int, progress: Callable[[int], None] | None = None
) -> Corpus:
    """n train-split (prompt, scene) pairs, their renders and `questions_per_scene` questions each."""
    pairs = sample_records(n, seed, "train")
    train = split_prompts("train", seed)
    rng = np.random.default_rng([seed, 1])
    questions = []
    for i, (spec, scene) in enumerate(pairs):
        pool = judge_prompts(spec, train, rng)
        questions.append([sample_question(scene, rng, judge_prompts=pool) for _ in range(questions_per_scene)])
        if progress is not None:
            progress(i + 1)
    return Corpus(
        specs=[spec for spec, _ in pairs],
        scenes=[scene for _, scene in pairs],
        renders=np.stack([render(scene) for _, scene in pairs]),
        questions=questions,
    )
