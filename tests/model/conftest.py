"""Fixtures: one tiny random Janus checkpoint per session, saved and loaded the real way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unigap.model import UnifiedModel, load_model, save_random_tiny

WORDS = (
    "a red blue green yellow circle square triangle star big small left right top bottom of the on in "
    "and is there does this image show what color shape ? , . yes no"
).split()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_tiny(tmp_path_factory.mktemp("tiny"), WORDS)


@pytest.fixture(scope="session")
def um(tiny_dir: Path) -> UnifiedModel:
    """A shared read-only model; tests that change weights or attach LoRA load their own."""
    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def editor(tmp_path_factory: pytest.TempPathFactory) -> UnifiedModel:
    """A tiny random checkpoint whose sidecar says it can edit."""
    return load_model(save_random_tiny(tmp_path_factory.mktemp("editor"), WORDS, seed=1, editing=True))


@pytest.fixture(scope="session")
def token_editor(tmp_path_factory: pytest.TempPathFactory) -> UnifiedModel:
    """As `editor`, reading the source image as its VQ ids (`edit_source` "tokens")."""
    directory = tmp_path_factory.mktemp("token_editor")
    return load_model(save_random_tiny(directory, WORDS, seed=1, editing=True, edit_source="tokens"))


@pytest.fixture
def fresh(tiny_dir: Path) -> UnifiedModel:
    return load_model(tiny_dir)


@pytest.fixture
def janus_pro_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint without its `unigap.json` sidecar, which makes it a Janus-Pro checkpoint."""
    for file in tiny_dir.iterdir():
        if file.name != "unigap.json":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    return tmp_path


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for _ in range(4)]
