"""Fixtures for the preference-data tests: the trainer tests' tiny ShapeWorld model, shared not copied."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
from tiny_world_fixtures import build_tiny_world_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_world_model(tmp_path_factory.mktemp("tiny_world"))
