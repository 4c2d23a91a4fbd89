"""Fixtures: a tiny random Janus over the ShapeWorld vocabulary, and DPO pairs with reference log-probs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import unigap.world
from unigap.diagnose.sweep import understanding_pairs
from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.train.dpo import GenerationPair, UnderstandingPair, with_reference
from unigap.world import render, sample_question, sample_scene, sample_scene_for, sample_spec


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_tiny(tmp_path_factory.mktemp("tiny"), unigap.world.vocabulary())


@pytest.fixture
def fresh(tiny_dir: Path) -> UnifiedModel:
    return load_model(tiny_dir)


def _make_pairs(um: UnifiedModel, n: int, seed: int = 0) -> tuple[list[UnderstandingPair], list[GenerationPair]]:
    """n understanding pairs (true vs wrong one-word answer) and n generation pairs (the rendered scene's
    VQ tokens vs random tokens), with reference log-probs and token counts from `um`'s base model."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    questions = [sample_question(scene, rng, "exists") for scene in scenes]
    triples = [(q.text, q.answer, "no" if q.answer == "yes" else "yes") for q in questions]
    und = understanding_pairs(um, [render(s) for s in scenes], triples)
    specs = [sample_spec(rng) for _ in range(n)]
    real = um.encode_images([render(sample_scene_for(spec, rng)) for spec in specs])
    noise = rng.integers(0, um.codebook_size, size=real.shape)
    gen = [
        GenerationPair(spec.text, tuple(r.tolist()), tuple(int(t) for t in z), 0.0, 0.0)
        for spec, r, z in zip(specs, real, noise, strict=True)
    ]
    return und, with_reference(um, gen)


@pytest.fixture(scope="session")
def make_pairs() -> Callable[..., tuple[list[UnderstandingPair], list[GenerationPair]]]:
    return _make_pairs
