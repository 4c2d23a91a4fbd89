"""Fixtures for the trainer tests: one tiny ShapeWorld-vocabulary checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_world_fixtures import build_tiny_world_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_world_model(tmp_path_factory.mktemp("tiny_world"))
