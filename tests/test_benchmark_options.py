"""The benchmarks refuse options they cannot run with, before any work (they crashed after minutes of it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _script(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("sampling", ["--cfg-scale", "1"], "--cfg-scale must be > 1"),  # transformers' image generate needs CFG
    ("sampling", ["--repeats", "0"], "must be at least 1, got 0"),  # a median of nothing
    ("dpo_step", ["--steps", "0"], "must be at least 1, got 0"),
])
def test_a_benchmark_refuses_what_it_cannot_run(script: str, argv: list[str], message: str,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    module = _script(script, monkeypatch)
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
