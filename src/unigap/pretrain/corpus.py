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
wait for on a 2-core CPU. A `sentence_fraction` share of them asks for a full-sentence answer (the answer
forms of `unigap.world.questions`).

* Critique (`critique_corpus`) teaches the model to judge and criticise pictures of a prompt: a train
  prompt, a train scene drawn for it, then the picture either intact, broken by one edit
  (`unigap.world.break_scene`) or damaged (`unigap.world.damage_scene`, a witness of the prompt mostly);
  four questions about it: the judge question for the prompt and for one of its near misses (one colour,
  shape, count or side changed: the hard negatives), and the reflection question for the prompt and for a
  near miss, answered by the exact reflection on what the picture shows (by the rule where damaged).
  Every prompt a question names is a train prompt; no image the model generated is ever used.
* Editing (`edit_corpus`) pairs a source scene with an instruction and the scene it makes: half are a
  broken prompted scene and the exact fix (what refinement needs), half a random scene and a random edit.
  Sources and results are train-split scenes; results are generation targets (VQ ids).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unigap.errors import UserError
from unigap.pretrain.labels import patch_labels
from unigap.world import (
    CATEGORIES,
    DEFAULT_CANVAS,
    EDIT_KINDS,
    REFLECT_QUESTION,
    Edit,
    Geometry,
    PromptSpec,
    Question,
    Scene,
    apply_edit,
    break_scene,
    check,
    damage_scene,
    judge_question,
    near_misses,
    parse_instruction,
    reflection_answer,
    render,
    render_damaged,
    rule_objects,
    sample_records,
    sample_scene,
    sample_scene_for,
    scene_split,
    split_prompts,
    random_train_scenes,
    train_questions,
)
from unigap.world.edits import Thing, candidate_edits, things

CRITIQUE_STREAM = 5
EDIT_STREAM = 6
PICTURES = ("intact", "broken", "damaged")  # what a critique picture shows, drawn uniformly
WITNESS_DAMAGE = 0.7  # share of damage that hits an object the prompt needs
DAMAGE_TRIES = 8  # damage that does not fit beside the other objects is drawn again
JUDGED_NEAR_MISSES = 1  # judge questions per critique picture besides its own prompt

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


def understanding_corpus(
    n: int,
    seed: int,
    questions_per_scene: int,
    sentence_fraction: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> UnderstandingCorpus:
    """n random train-split scenes, their renders and `questions_per_scene` questions each, a
    `sentence_fraction` share of them in the full-sentence form (`unigap.world.train_questions`)."""
    scenes = random_train_scenes(n, seed)
    questions = train_questions(scenes, seed, questions_per_scene, sentence_fraction, progress)
    return UnderstandingCorpus(scenes=scenes, renders=np.stack([render(s) for s in scenes]), questions=questions)


@dataclass
class CritiqueCorpus:
    """Pictures of train prompts (intact, broken or damaged) with judge and reflection questions; VQ
    reconstructions of the pictures once a VQ exists."""

    pictures: list[str]  # "intact", "broken" or "damaged:<kind>"
    renders: np.ndarray  # [S, H, W, 3] uint8
    questions: list[list[Question]]
    reconstructions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pictures)


def _train_scene_for(spec: PromptSpec, seed: int, rng: np.random.Generator) -> Scene:
    scene = sample_scene_for(spec, rng)
    while scene_split(scene, seed) != "train":
        scene = sample_scene_for(spec, rng)
    return scene


def _train_break(scene: Scene, spec: PromptSpec, seed: int, rng: np.random.Generator) -> Scene | None:
    """`break_scene` into a train-split scene; None if no edit does that."""
    try:
        return break_scene(scene, spec, rng, accept=lambda broken: scene_split(broken, seed) == "train")[0]
    except UserError:
        return None


def _critique_picture(
    spec: PromptSpec, scene: Scene, seed: int, rng: np.random.Generator
) -> tuple[str, np.ndarray, list[Thing]]:
    """(what the picture shows, its render, its objects by the world's rule) for one draw of `PICTURES`."""
    picture = PICTURES[rng.integers(len(PICTURES))]
    if picture == "broken":
        broken = _train_break(scene, spec, seed, rng)
        if broken is not None:
            return picture, render(broken), things(broken.objects)
    elif picture == "damaged":
        witnesses = [i for i, o in enumerate(scene.objects) if any(item.matches(o) for item in spec.items)]
        for _ in range(DAMAGE_TRIES):
            index = witnesses[rng.integers(len(witnesses))] if witnesses and rng.random() < WITNESS_DAMAGE else None
            damaged = damage_scene(scene, rng, index=index)
            if damaged is not None:
                return f"damaged:{damaged.kind}", render_damaged(damaged), rule_objects(damaged)
    return "intact", render(scene), things(scene.objects)


def critique_corpus(n: int, seed: int, progress: Callable[[int], None] | None = None) -> CritiqueCorpus:
    """n pictures of train prompts with four critique questions each (see the module docstring)."""
    train = split_prompts("train", seed)
    allowed = {spec.text for spec in train}
    by_category = {c: [s for s in train if s.category == c] for c in CATEGORIES}
    rng = np.random.default_rng([seed, CRITIQUE_STREAM])
    pictures, renders, questions = [], [], []
    margin = Geometry.for_canvas(DEFAULT_CANVAS).margin
    while len(pictures) < n:
        pool = by_category[CATEGORIES[rng.integers(len(CATEGORIES))]]
        spec = pool[rng.integers(len(pool))]
        picture, image, objects = _critique_picture(spec, _train_scene_for(spec, seed, rng), seed, rng)
        near = [other for other in near_misses(spec) if other.text in allowed] or [spec]
        hard = [near[i] for i in rng.permutation(len(near))[:JUDGED_NEAR_MISSES]]
        asked = []
        for prompt in (spec, *hard):
            asked.append(Question("judge", judge_question(prompt), "yes" if check(objects, prompt, margin)[0] else "no"))
        for prompt in (spec, near[rng.integers(len(near))]):
            answer = reflection_answer(objects, prompt, margin)
            if answer is not None:
                asked.append(Question("reflect", REFLECT_QUESTION.format(prompt=prompt.text), answer))
        pictures.append(picture)
        renders.append(image)
        questions.append(asked)
        if progress is not None:
            progress(len(pictures))
    return CritiqueCorpus(pictures=pictures, renders=np.stack(renders), questions=questions)


@dataclass
class EditCorpus:
    """Source pictures, instructions and the VQ ids of the scenes they make (once a VQ exists)."""

    sources: np.ndarray  # [S, H, W, 3] uint8 renders
    instructions: list[str]
    results: np.ndarray  # [S, H, W, 3] uint8 renders of the edited scenes
    tokens: np.ndarray | None = None  # [S, N] int64: VQ ids of `results`
    reconstructions: np.ndarray | None = None  # [S, H, W, 3] uint8: the VQ's decoding of `sources`

    def __len__(self) -> int:
        return len(self.instructions)


def _random_edit(scene: Scene, seed: int, rng: np.random.Generator) -> tuple[Edit, Scene] | None:
    """A random edit of the scene (kind uniform, then edits of that kind in random order) whose result is a
    train-split scene, and that result; None if no edit of the drawn kind gives one."""
    options = candidate_edits(scene.objects)
    kinds = sorted({e.kind for e in options}, key=EDIT_KINDS.index)
    kind = kinds[rng.integers(len(kinds))]
    of_kind = [e for e in options if e.kind == kind]
    for i in rng.permutation(len(of_kind)):
        result = _train_result(scene, of_kind[i], seed, rng)
        if result is not None:
            return of_kind[i], result
    return None


def _train_result(source: Scene, edit: Edit, seed: int, rng: np.random.Generator, tries: int = 5) -> Scene | None:
    """The edited scene, its random placement redrawn until it is a train-split scene that differs from the
    source; None if it never is (or the edit finds no free position)."""
    for _ in range(tries if edit.kind in ("add", "move") else 1):
        try:
            result = apply_edit(source, edit, rng)
        except UserError:
            return None
        if scene_split(result, seed) == "train" and result != source:
            return result
    return None


def edit_corpus(n: int, seed: int, progress: Callable[[int], None] | None = None) -> EditCorpus:
    """n (source scene, instruction, edited scene) triples of train-split scenes (see the module docstring)."""
    train = split_prompts("train", seed)
    rng = np.random.default_rng([seed, EDIT_STREAM])
    sources, instructions, results = [], [], []
    while len(instructions) < n:
        if rng.random() < 0.5:
            spec = train[rng.integers(len(train))]
            source = _train_break(_train_scene_for(spec, seed, rng), spec, seed, rng)
            if source is None:
                continue
            edit = parse_instruction(reflection_answer(source.objects, spec, source.geometry.margin))
            result = _train_result(source, edit, seed, rng)
        else:
            source = sample_scene(rng)
            drawn = _random_edit(source, seed, rng) if scene_split(source, seed) == "train" else None
            edit, result = drawn if drawn is not None else (None, None)
        if result is None:
            continue
        sources.append(render(source))
        instructions.append(edit.text)
        results.append(render(result))
        if progress is not None:
            progress(len(instructions))
    return EditCorpus(sources=np.stack(sources), instructions=instructions, results=np.stack(results))


@dataclass
class Corpora:
    """Everything the joint stage draws its batches from."""

    und: UnderstandingCorpus
    gen: GenerationCorpus
    critique: CritiqueCorpus
    edit: EditCorpus
