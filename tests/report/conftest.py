"""The synthetic study, built once per session."""

from __future__ import annotations

import pytest
from synthetic_study import make_study

from unigap.report import Study


@pytest.fixture(scope="session")
def study() -> Study:
    return make_study()
