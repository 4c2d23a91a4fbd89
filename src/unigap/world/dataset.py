"""Deterministic train/val/test datasets written as JSONL + PNG, and loading them back.

Why: results must be reproducible byte for byte, and held-out splits must be genuinely held out.

* Hash: h(kind, text) = the first 8 bytes of sha256(f"{seed}:{kind}:{text}") as a big-endian integer.
* Prompt split: within each category, prompt texts are ordered by h("prompt", text) (ties by text); the
  first ~10% (at least one) go to test, the next ~10% (at least one) to val, the rest to train.
  Every category therefore appears in every split, and no prompt text is in two splits.
* Scene split: a scene belongs to split number h("scene", canonical json) % 3 (train, val, test);
  a sampled scene from another split's share is rejected and redrawn. So no scene is in two splits
  (even under different prompts), whatever n.
* Sampling: record i draws a category (uniform, unless fixed), a prompt of that category uniformly from
  the split's share, then a scene for it (`sample_scene_for`), from rng = default_rng([draw seed, split index]),
  the draw seed being `seed` unless given. Use one seed for all splits of one dataset: the partition depends on
  the seed; another draw seed gives other scenes of the same split (the pretraining corpus is draw seed = seed).
* Files: DIR/samples.jsonl (one JSON object per line, sorted keys) and DIR/images/{i:06d}.png (PIL PNG,
  compress_level 6, no metadata); the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from unigap.atomic import atomic_write_lines, indexed_files_atomically
from unigap.errors import UserError
from unigap.world.prompts import CATEGORIES, PromptSpec, all_specs, near_misses, sample_scene_for, satisfies
from unigap.world.questions import Question, sample_question
from unigap.world.render import render_pil
from unigap.world.scene import DEFAULT_CANVAS, Scene, check_integer, sample_scene, whole_number

SPLITS: tuple[str, ...] = ("train", "val", "test")
HELD_OUT_FRACTION = 0.1  # of each category's prompts, for val and for test each
SAMPLES_FILE = "samples.jsonl"
QUESTIONS_FILE = "questions.jsonl"
JUDGE_POOL = 16  # prompts a judge question about one scene is drawn from: one it satisfies, its near misses, random
SCENE_STREAM = 3  # rng stream of random train scenes, apart from the question stream (1)
QUESTION_STREAM = 1
IMAGES_DIR = "images"
IMAGE_NAME = r"\d{6,}\.png"  # a sample's image in IMAGES_DIR ({index:06d}.png): what a rewrite replaces


@dataclass(frozen=True)
class Record:
    """One dataset sample: the prompt spec, a scene satisfying it, and where its PNG lies."""

    index: int
    split: str
    spec: PromptSpec
    scene: Scene
    image_path: Path

    @property
    def prompt(self) -> str:
        return self.spec.text


def _hash(seed: int, kind: str, text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{kind}:{text}".encode()).digest()[:8], "big")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


@lru_cache(maxsize=64)
def split_prompts(split: str, seed: int, category: str | None = None) -> tuple[PromptSpec, ...]:
    """The prompts of one split (optionally one category), in the fixed `all_specs` order."""
    _check_split(split)
    if category is None:
        return tuple(s for c in CATEGORIES for s in split_prompts(split, seed, c))
    specs = all_specs(category)
    ranked = sorted(specs, key=lambda s: (_hash(seed, "prompt", s.text), s.text))
    n_held = max(1, round(HELD_OUT_FRACTION * len(specs)))
    share = {"test": ranked[:n_held], "val": ranked[n_held : 2 * n_held], "train": ranked[2 * n_held :]}[
        split
    ]
    chosen = {s.text for s in share}
    return tuple(s for s in specs if s.text in chosen)


def scene_json(scene: Scene) -> str:
    """Canonical JSON of a scene (sorted keys, no spaces): its identity for hashing and comparison."""
    return json.dumps(scene.to_dict(), sort_keys=True, separators=(",", ":"))


def scene_split(scene: Scene, seed: int) -> str:
    """The split a scene belongs to (see module docstring)."""
    return SPLITS[_hash(seed, "scene", scene_json(scene)) % len(SPLITS)]


def sample_records(
    n: int,
    seed: int,
    split: str = "train",
    category: str | None = None,
    canvas: int = DEFAULT_CANVAS,
    draw_seed: int | None = None,
) -> list[tuple[PromptSpec, Scene]]:
    """n (spec, scene) pairs of one split, deterministic in the arguments.

    `seed` fixes the partition into splits; `draw_seed` (default: `seed`) only which pairs are drawn from it,
    so evaluations with different draw seeds sample the same held-out split."""
    _check_split(split)
    check_integer("n", n)
    categories = CATEGORIES if category is None else (category,)
    pools = {c: split_prompts(split, seed, c) for c in categories}
    rng = np.random.default_rng([seed if draw_seed is None else draw_seed, SPLITS.index(split)])
    out = []
    for _ in range(n):
        pool = pools[categories[rng.integers(len(categories))]]
        spec = pool[rng.integers(len(pool))]
        scene = sample_scene_for(spec, rng, canvas)
        while scene_split(scene, seed) != split:
            scene = sample_scene_for(spec, rng, canvas)
        out.append((spec, scene))
    return out


def random_train_scenes(n: int, seed: int, draw: int | None = None) -> list[Scene]:
    """n uniformly random scenes (`sample_scene`, 1-4 random objects) of the train split of partition `seed`;
    `draw` picks another sample of them (None: pretraining's)."""
    check_integer("n", n, least=0)
    rng = np.random.default_rng([seed, SCENE_STREAM, *([] if draw is None else [draw])])
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = sample_scene(rng)
        if scene_split(scene, seed) == "train":
            scenes.append(scene)
    return scenes


def judge_prompts(scene: Scene, train: Sequence[PromptSpec], rng: np.random.Generator) -> list[PromptSpec]:
    """A train prompt the scene satisfies (if any; a yes), up to half the pool of its train near misses
    (mostly no, and hard), then random train prompts (mostly no, and easy).

    Without a yes in the pool, answer balancing (`sample_question`) could only ever ask for a no.
    """
    order = rng.permutation(len(train))
    fitting = next((train[i] for i in order if satisfies(scene, train[i])), None)
    if fitting is None:
        return [train[i] for i in order[-(JUDGE_POOL - 1) :]]
    allowed = {spec.text for spec in train}
    near = [spec for spec in near_misses(fitting) if spec.text in allowed]
    near = [near[i] for i in rng.permutation(len(near))[: JUDGE_POOL // 2]]
    return [fitting, *near, *(train[i] for i in order[-(JUDGE_POOL - 1 - len(near)) :])]


def train_questions(
    scenes: Sequence[Scene],
    seed: int,
    per_scene: int,
    sentence_fraction: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> list[list[Question]]:
    """`per_scene` answer-balanced questions about each scene (every kind; judge questions name train prompts of
    partition `seed` only), a `sentence_fraction` share in the full-sentence form; seeded."""
    check_integer("per_scene", per_scene, least=0)
    if not 0 <= sentence_fraction <= 1:
        raise UserError(f"sentence_fraction must be a share from 0 to 1, got {sentence_fraction!r}")
    train = split_prompts("train", seed)
    rng = np.random.default_rng([seed, QUESTION_STREAM])
    questions = []
    for i, scene in enumerate(scenes):
        pool = judge_prompts(scene, train, rng)
        forms = np.where(rng.random(per_scene) < sentence_fraction, "sentence", "word")
        questions.append([sample_question(scene, rng, judge_prompts=pool, form=str(form)) for form in forms])
        if progress is not None:
            progress(i + 1)
    return questions


def _record_json(index: int, split: str, seed: int, spec: PromptSpec, scene: Scene, image: str,
                 draw_seed: int | None) -> str:
    row: dict[str, Any] = {
        "index": index,
        "split": split,
        "seed": seed,
        **({} if draw_seed is None else {"draw_seed": draw_seed}),
        "image": image,
        "prompt": spec.text,
        "category": spec.category,
        "spec": spec.to_dict(),
        "scene": scene.to_dict(),
    }
    return json.dumps(row, sort_keys=True)


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    split: str = "train",
    category: str | None = None,
    canvas: int = DEFAULT_CANVAS,
    progress: Callable[[int], None] | None = None,
    questions: int = 0,
    draw_seed: int | None = None,
) -> Path:
    """Write n samples of one split to out_dir (PNGs and samples.jsonl, staged and then swapped in, so an
    interrupted rerun leaves the earlier dataset as it was); returns the JSONL path.

    `draw_seed` (default: `seed`) picks which scenes of the split are drawn; the partition stays `seed`'s. The
    shipped model was pretrained on `sample_records(6000, 0, "train")`, so fine-tuning data that should be new
    to it takes another draw seed.

    `progress(k)` is called after each image with the number written so far (for a progress bar). With
    `questions` > 0, also questions.jsonl: that many one-word questions per image (`train_questions`), one row each
    with image, question, answer and kind: understanding data in the format `unigap train --objective sft` and
    `unigap eval --questions` read.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output directory {out} is a file")
    check_integer("questions", questions, least=0)
    pairs = sample_records(n, seed, split, category, canvas, draw_seed)
    # samples.jsonl last: a study reads its presence as complete data
    with indexed_files_atomically(out, {QUESTIONS_FILE: ["image"], SAMPLES_FILE: ["image"]}, inside=out / IMAGES_DIR,
                                  named=IMAGE_NAME) as staging:
        (staging / IMAGES_DIR).mkdir()
        lines = []
        for i, (spec, scene) in enumerate(pairs):
            rel = f"{IMAGES_DIR}/{i:06d}.png"
            render_pil(scene).save(staging / rel, format="PNG", optimize=False, compress_level=6)
            lines.append(_record_json(i, split, seed, spec, scene, rel, draw_seed))
            if progress is not None:
                progress(i + 1)
        if questions > 0:  # (an earlier run's questions go in any case: they ask about replaced images)
            asked = train_questions([scene for _, scene in pairs], seed, questions, sentence_fraction=0.0)
            rows = [{"image": f"{IMAGES_DIR}/{i:06d}.png", "question": q.text, "answer": q.answer, "kind": q.kind}
                    for i, qs in enumerate(asked) for q in qs]
            atomic_write_lines(staging / QUESTIONS_FILE, [json.dumps(row, sort_keys=True) for row in rows])
        atomic_write_lines(staging / SAMPLES_FILE, lines)
    return out / SAMPLES_FILE


def load_dataset(directory: str | Path) -> list[Record]:
    """The records of a directory written by `write_dataset`; `UserError` if it is missing or malformed."""
    root = Path(directory)
    path = root / SAMPLES_FILE
    if not path.is_file():
        raise UserError(f"no {SAMPLES_FILE} in {root}")
    records = []
    try:
        with path.open(encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text: {exc}") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():  # (a trailing blank line, or files joined with `cat`: as the other JSONL readers do)
            continue
        try:
            row = json.loads(line)
            records.append(
                Record(
                    index=whole_number(row["index"]),
                    split=str(row["split"]),
                    spec=PromptSpec.from_dict(row["spec"]),
                    scene=Scene.from_dict(row["scene"]),
                    image_path=root / row["image"],
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:  # (deep nesting)
            raise UserError(f"{path}:{line_no}: malformed record: {exc}") from None
    return records
