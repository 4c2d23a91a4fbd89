"""`unigap compare`: eval reports against a baseline's with the study's tests (Welch, paired, Bonferroni)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from synthetic_study import eval_report

from unigap.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["compare", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _write(path: Path, p_gen: float, seed: int = 0, draw: int = 0) -> Path:
    report = eval_report(np.random.default_rng([seed, draw]), 0.6, p_gen, n=300)
    report["config"]["seed"] = seed
    path.write_text(json.dumps(report))
    return path


def _verified(path: Path) -> np.ndarray:
    return np.array([r["verified"] for r in json.loads(path.read_text())["records"]["generation"]], dtype=float)


def test_a_model_against_its_baseline_welch_paired_and_json(tmp_path: Path, capsys) -> None:
    before, after = _write(tmp_path / "before.json", 0.40), _write(tmp_path / "after.json", 0.55, draw=1)
    code, out, _ = _run(capsys, before, f"trained={after}", "--out", tmp_path / "cmp.json")
    assert code in (0, None) and "trained" in out and "generation" in out
    results = json.loads((tmp_path / "cmp.json").read_text())
    generation = results["results"]["trained"]["generation.accuracy"]
    a, b = _verified(after), _verified(before)
    assert math.isclose(generation["delta"], a.mean() - b.mean(), abs_tol=1e-12)
    assert math.isclose(generation["p"], stats.ttest_ind(a, b, equal_var=False).pvalue, rel_tol=1e-9)
    assert math.isclose(generation["paired"]["p"], stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)  # same items
    assert results["bonferroni"]["tests"] == 4 and results["baseline"] == "before"


def test_reports_sharing_a_name_are_one_models_seeds(tmp_path: Path, capsys) -> None:
    base = [_write(tmp_path / f"base{s}.json", 0.4, seed=s) for s in (0, 1)]
    arm = [_write(tmp_path / f"arm{s}.json", 0.5, seed=s, draw=1) for s in (0, 1)]
    code, _, _ = _run(capsys, *(f"base={p}" for p in base), *(f"arm={p}" for p in arm), "--out", tmp_path / "c.json")
    results = json.loads((tmp_path / "c.json").read_text())
    assert code in (0, None) and results["seeds"] == [0, 1]
    assert results["results"]["arm"]["generation.accuracy"]["n"] == 600  # both seeds' items, pooled
    code, _, _ = _run(capsys, f"base={tmp_path}/base*.json", f"arm={tmp_path}/arm?.json", "--out", tmp_path / "g.json")
    assert code in (0, None) and json.loads((tmp_path / "g.json").read_text())["results"] == results["results"]


@pytest.mark.parametrize("case, message", [
    ("one", "give at least two models to compare"),
    ("missing", "report {tmp}/nothing.json not found"),
    ("directory", "{tmp} is a directory; give the report file `unigap eval --out` wrote"),
    ("not a report", "{tmp}/other.json is not a `unigap eval` report"),
    ("same seed", "are both 'a' seed 0; name them apart with NAME=FILE"),
    ("base named", "the name 'base' is kept for the baseline"),
    ("bad name", "'=x.json': expected NAME=FILE or FILE"),
    ("no match", "{tmp}/seed*/eval.json matches no file"),
])  # fmt: skip
def test_bad_input_is_one_line_and_nothing_written(tmp_path: Path, capsys, case: str, message: str) -> None:
    good = _write(tmp_path / "good.json", 0.4)
    (tmp_path / "other.json").write_text('{"loss": 1}')
    args = {
        "one": [good],
        "missing": [good, tmp_path / "nothing.json"],
        "directory": [good, tmp_path],
        "not a report": [good, tmp_path / "other.json"],
        "same seed": [good, f"a={good}", f"a={good}"],
        "base named": [good, f"base={good}"],
        "bad name": [good, "=x.json"],
        "no match": [good, f"x={tmp_path}/seed*/eval.json"],
    }[case]
    code, out, err = _run(capsys, *args, "--out", tmp_path / "out.json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert message.format(tmp=tmp_path) in err and not (tmp_path / "out.json").exists()
