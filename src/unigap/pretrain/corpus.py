"""The pretraining corpora: train-split scenes rendered once, one set per task.

* Generation learns prompt → image on scenes drawn *for* train prompts (`sample_records`), the pairs
  whose VQ tokens are its targets; the VQ trains on the same renders.
* Understanding learns on *uniformly random* train-split scenes (1-4 random objects) with questions
  drawn once per scene. Why not the prompted scenes: the prompt split holds whole attribute
  combinations out (a held-out "a red triangle" means no train scene is drawn for it), so on prompted
  scenes an attribute is partly predictable from the others, and a small model learns that shortcut
  instead of looking. Held-out questions are asked about scenes of held-out prompts, exactly where the
  shortcut is wrong: the v4 model named the shape of a lone object correctly 12% of the time, below
  chance. Random scenes carry no such correlation. They are still train-split scenes (`scene_split`),
  and every prompt text a question mentions is a train prompt.

Questions are drawn once, up front: sampling a question costs more than a training step can afford to
wait for on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unigap.pretrain.labels import patch_labels
from unigap.world import (
    PromptSpec,
    Question,
    Scene,
    render,
    sample_question,
    sample_records,
    sample_scene,
    satisfies,
    scene_split,
    split_prompts,
)

JUDGE_POOL = 16  # prompts a judge question about one scene is drawn from: one it satisfies + random train prompts
SCENE_STREAM = 3  # rng stream of the understanding scenes, apart from the question stream (1)


@dataclass
class GenerationCorpus:
    """Train prompts, a scene drawn for each, its render and per-patch labels (`labels.patch_labels`),
    and the render's VQ ids once a VQ exists."""

    specs: list[PromptSpec]
    renders: np.ndarray  # [S, H, W, 3] uint8
    labels: np.ndarray  # [S, 3, N] int64: shape, colour, size of the object under each image token
    tokens: np.ndarray | None = None  # [S, N] int64

    def __len__(self) -> int:
        return len(self.specs)


@dataclass
class UnderstandingCorpus:
    """Random train-split scenes, their renders and questions; VQ reconstructions once a VQ exists."""

    scenes: list[Scene]
    renders: np.ndarray  # [S, H, W, 3] uint8
    questions: list[list[Question]]
    reconstructions: np.ndarray | None = None  # [S, H, W, 3] uint8: the VQ's decoding of the renders

    def __len__(self) -> int:
        return len(self.scenes)


def judge_prompts(scene: Scene, train: Sequence[PromptSpec], rng: np.random.Generator) -> list[PromptSpec]:
    """A train prompt the scene satisfies (if any; a yes), then random train prompts (mostly no).

    Without a yes in the pool, answer balancing (`sample_question`) could only ever ask for a no.
    """
    order = rng.permutation(len(train))
    fitting = next((train[i] for i in order if satisfies(scene, train[i])), None)
    others = [train[i] for i in order[-(JUDGE_POOL - 1) :]]
    return ([fitting] if fitting is not None else []) + others


def generation_corpus(n: int, seed: int, grid: int, progress: Callable[[int], None] | None = None) -> GenerationCorpus:
    """n train-split (prompt, scene) pairs, the scenes' renders and their labels on a grid × grid token grid."""
    pairs = sample_records(n, seed, "train")
    renders = []
    for i, (_, scene) in enumerate(pairs):
        renders.append(render(scene))
        if progress is not None:
            progress(i + 1)
    labels = np.stack([patch_labels(scene, grid) for _, scene in pairs])
    return GenerationCorpus(specs=[spec for spec, _ in pairs], renders=np.stack(renders), labels=labels)


def random_train_scenes(n: int, seed: int) -> list[Scene]:
    """n uniformly random scenes (`sample_scene`) of the train split, seeded."""
    rng = np.random.default_rng([seed, SCENE_STREAM])
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = sample_scene(rng)
        if scene_split(scene, seed) == "train":
            scenes.append(scene)
    return scenes


def understanding_corpus(
    n: int, seed: int, questions_per_scene: int, progress: Callable[[int], None] | None = None
) -> UnderstandingCorpus:
    """n random train-split scenes, their renders and `questions_per_scene` questions each."""
    scenes = random_train_scenes(n, seed)
    train = split_prompts("train", seed)
    rng = np.random.default_rng([seed, 1])
    questions = []
    for i, scene in enumerate(scenes):
        pool = judge_prompts(scene, train, rng)
        questions.append([sample_question(scene, rng, judge_prompts=pool) for _ in range(questions_per_scene)])
        if progress is not None:
            progress(i + 1)
    return UnderstandingCorpus(scenes=scenes, renders=np.stack([render(s) for s in scenes]), questions=questions)
