"""Shared ShapeWorld test fixture: a fixed corpus of rendered scenes."""

from __future__ import annotations

import numpy as np
import pytest

from unigap.world import PromptSpec, Scene, render, sample_scene_for, sample_spec


@pytest.fixture(scope="session")
def corpus() -> list[tuple[PromptSpec, Scene, np.ndarray]]:
    """2,000 fresh (spec, scene satisfying it, render) triples over all categories, fixed seed."""
    rng = np.random.default_rng(20240601)
    out = []
    for _ in range(2000):
        spec = sample_spec(rng)
        scene = sample_scene_for(spec, rng)
        out.append((spec, scene, render(scene)))
    return out
