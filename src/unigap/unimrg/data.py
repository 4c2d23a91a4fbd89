"""UniMRG's training data from ShapeWorld: train-split scenes, questions with exact answers, and the exact
representations of each scene as VQ token targets.

Why ShapeWorld renders them exactly: UniMRG needs a depth estimator and a segmenter to make its targets; the world
draws the segmentation map (`unigap.world.render_segmentation`) and a depth-like map (`render_depth`: each object's
mask shaded by where it stands on the ground plane) from the scene itself. The reconstruction target is the input
image's own VQ tokens. Every image is a render of a train-split scene: no generated image is used.

Each representation is asked for by its own instruction in the editing prompt (input image through the
understanding encoder, then the instruction, then the target's image tokens): `INSTRUCTIONS`. On the embedded
model's word-level tokenizer the words "reconstruct" and "depth" are unknown, so the instructions are chosen to
differ in known words too; `check_instructions` refuses a tokenizer that cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unigap.errors import UserError
from unigap.train.sft import vq_tokens
from unigap.world import Question, Scene, random_train_scenes, render, render_depth, render_segmentation, train_questions

DRAW = 4  # which sample of random train scenes (`random_train_scenes`): not the pretraining one
ENCODE_BATCH = 64
INSTRUCTIONS: dict[str, str] = {
    "reconstruction": "Reconstruct the image.",
    "segmentation": "Show the shape of each object in the image.",
    "depth": "Show the depth of each object in the image.",
}
RENDERERS: dict[str, Callable[[Scene], np.ndarray]] = {
    "reconstruction": render,
    "segmentation": render_segmentation,
    "depth": render_depth,
}


@dataclass(frozen=True)
class UniMRGData:
    """Renders, their questions, and each auxiliary representation's VQ ids."""

    images: np.ndarray  # [S, H, W, 3] uint8: the understanding input
    questions: list[list[Question]]  # [S][questions_per_image]
    targets: dict[str, torch.LongTensor]  # representation -> [S, N] VQ ids of its map of each scene

    def __len__(self) -> int:
        return len(self.images)


def check_instructions(um: object, representations: Sequence[str]) -> None:
    """A `UserError` when two representations' instructions tokenize alike (the model could not tell which map
    to draw)."""
    seen: dict[tuple[int, ...], str] = {}
    for name in representations:
        ids = tuple(um.prompts.edit_ids(INSTRUCTIONS[name]))  # type: ignore[attr-defined]
        if ids in seen:
            raise UserError(f"this model's tokenizer reads the {seen[ids]} and {name} instructions as the same tokens")
        seen[ids] = name


def build_data(
    um: object, n_scenes: int, data_seed: int, questions_per_image: int, sentence_fraction: float,
    representations: Sequence[str], progress: Callable[[int], None] | None = None,
) -> UniMRGData:
    """`n_scenes` random train-split scenes of partition `data_seed` (the same for every training seed), their
    questions and the VQ ids of each asked-for representation; `progress(done)` counts scenes, then encodings."""
    scenes = random_train_scenes(n_scenes, data_seed, draw=DRAW)
    questions = train_questions(scenes, data_seed, questions_per_image, sentence_fraction, progress)
    images = np.stack([render(scene) for scene in scenes])
    targets = {}
    for i, name in enumerate(representations):
        maps = images if name == "reconstruction" else [RENDERERS[name](scene) for scene in scenes]
        targets[name] = vq_tokens(um, maps, ENCODE_BATCH)
        if progress is not None:
            progress(n_scenes * (i + 2))
    return UniMRGData(images, questions, targets)  # type: ignore[arg-type]
