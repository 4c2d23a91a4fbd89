"""Fixtures for the study tests: the trainer tests' tiny ShapeWorld model, and one finished small study."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
from tiny_world_fixtures import build_tiny_world_model

from unigap.report import build_report
from unigap.study import StudyConfig, run_study


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_world_model(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def small_config(tiny_dir: Path) -> StudyConfig:
    """Every stage at its smallest: 2 seeds, the two single-task strategies (so soups and oracle run) + PCGrad.
    Rendered-scene generation pairs: the random test model's two samples of a prompt score alike (no gen-model pair)."""
    return StudyConfig(
        model=str(tiny_dir), seeds=2, n=3, und_pairs=4, gen_pairs=4, gen_kind="gen-real", und_fallback_gt=True,
        diagnose_pairs=4,
        sweep_probes=0, methods=("und-only", "gen-only", "pcgrad"), steps=2, batch_size=8,
    )  # fmt: skip


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory, small_config: StudyConfig) -> Path:
    out = tmp_path_factory.mktemp("study") / "run"
    build_report(run_study(small_config, out, show_progress=False), out)
    return out
