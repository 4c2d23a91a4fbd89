"""Thread count: the CPUs available by default, the user's variable when set, one clear error when bad."""

from __future__ import annotations

import pytest

from unigap.errors import UserError
from unigap.threads import available_cpus, configure_threads


def test_default_is_the_available_cpus_and_the_variable_overrides_it() -> None:
    assert configure_threads({}) == available_cpus() >= 1
    assert configure_threads({"UNIGAP_NUM_THREADS": ""}) == available_cpus()  # empty means the default
    assert configure_threads({"OMP_NUM_THREADS": "3"}) == 3  # the user's own setting is kept
    assert configure_threads({"OMP_NUM_THREADS": "²"}) is None  # (no count: left for torch to read, not a traceback)
    env = {"OMP_NUM_THREADS": "4,2"}  # (OpenMP's nested list: a traceback for every command, --help too)
    assert configure_threads(env) == 4 and env["OMP_NUM_THREADS"] == "4,2"
    env = {"UNIGAP_NUM_THREADS": "1", "OMP_NUM_THREADS": "3"}
    assert configure_threads(env) == 1 and env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("value", ["0", "two", "-1", "²", "４"])  # (a superscript: int() raised; a full-width digit
# passed, into OMP_NUM_THREADS)
def test_a_bad_value_is_one_clear_error(value: str) -> None:
    with pytest.raises(UserError, match="UNIGAP_NUM_THREADS must be a positive integer"):
        configure_threads({"UNIGAP_NUM_THREADS": value})


def test_a_cgroup_v1_quota_caps_the_count_as_a_v2_one_does(tmp_path, monkeypatch) -> None:
    """A container with `--cpus=2` on an older (cgroup v1) host was given every host core: the oversubscription
    this module exists to prevent."""
    import unigap.threads as threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "CPU_MAX", tmp_path / "absent")
    quota, period = tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"
    monkeypatch.setattr(threads, "CFS_QUOTA", quota)
    monkeypatch.setattr(threads, "CFS_PERIOD", period)
    period.write_text("100000\n")
    quota.write_text("150000\n")  # 1.5 CPUs: 2 threads
    assert available_cpus() == 2
    quota.write_text("-1\n")  # no quota
    assert available_cpus() == 64
    (tmp_path / "cpu.max").write_text("300000 100000\n")  # v2 wins where it is
    monkeypatch.setattr(threads, "CPU_MAX", tmp_path / "cpu.max")
    assert available_cpus() == 3


def test_the_thread_count_is_set_before_the_cli_imports_numpy() -> None:
    """numpy's BLAS reads OMP_NUM_THREADS once, when imported: importing the CLI imported it (through its commands'
    modules) before `main` set the count, so BLAS ran on every host core whatever UNIGAP_NUM_THREADS said."""
    import os
    import subprocess
    import sys

    probe = ("import os, sys\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'numpy' and 'seen' not in globals():\n"
             "            globals()['seen'] = os.environ.get('OMP_NUM_THREADS')\n"
             "        return None\n"
             "sys.meta_path.insert(0, Spy())\n"
             "import unigap.cli\n"
             "print(seen)\n")
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"} | {"UNIGAP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
