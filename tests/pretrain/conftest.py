"""Shared by the pretraining tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from unigap.pretrain import run as run_module


@pytest.fixture(scope="module", autouse=True)
def few_fidelity_scenes() -> Iterator[None]:
    """Whole pretraining runs check their VQ's fidelity on 16 held-out scenes, not 200: the check only reaches the
    log, which no test reads, and it took a third of each test run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "VQ_CHECK", 16)
        yield
