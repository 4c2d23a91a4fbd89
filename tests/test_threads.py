"""Thread count: the CPUs available by default, the user's variable when set, one clear error when bad."""

from __future__ import annotations

import pytest

from unigap.errors import UserError
from unigap.threads import available_cpus, configure_threads


def test_default_is_the_available_cpus_and_the_variable_overrides_it() -> None:
    assert configure_threads({}) == available_cpus() >= 1
    assert configure_threads({"UNIGAP_NUM_THREADS": ""}) == available_cpus()  # empty means the default
    assert configure_threads({"OMP_NUM_THREADS": "3"}) == 3  # the user's own setting is kept
    env = {"OMP_NUM_THREADS": "4,2"}  # (OpenMP's nested list: a traceback for every command, --help too)
    assert configure_threads(env) == 4 and env["OMP_NUM_THREADS"] == "4,2"
    env = {"UNIGAP_NUM_THREADS": "1", "OMP_NUM_THREADS": "3"}
    assert configure_threads(env) == 1 and env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_value_is_one_clear_error(value: str) -> None:
    with pytest.raises(UserError, match="UNIGAP_NUM_THREADS must be a positive integer"):
        configure_threads({"UNIGAP_NUM_THREADS": value})
