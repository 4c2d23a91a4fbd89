"""Arm against arm (`unigap.report.compare`): paired t-tests on lined-up items, Welch otherwise, per question kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from unigap.errors import UnigapWarning
from unigap.report import MethodRun, Study, build_report
from unigap.report.compare import comparisons

KINDS = ("count", "position")


def _report(rng: np.random.Generator, p_und: dict[str, float], p_gen: float, n: int = 120, shift: int = 0) -> dict:
    und = [{"index": i, "question": f"q{i + shift}", "kind": KINDS[i % 2],
            "correct": bool(rng.random() < p_und[KINDS[i % 2]])} for i in range(n)]
    gen = [{"index": i, "prompt": f"p{i}", "verified": bool(rng.random() < p_gen), "self_rejected": False,
            "weak_generation": None} for i in range(n)]
    return {"records": {"understanding": und, "generation": gen}}


def _study(shift: int = 0) -> Study:
    runs = []
    levels = {"base": ({"count": 0.5, "position": 0.5}, 0.4), "und-sft": ({"count": 0.5, "position": 0.5}, 0.4),
              "unimrg": ({"count": 0.5, "position": 0.8}, 0.4)}
    for seed in (0, 1, 2):
        for index, (method, (und, gen)) in enumerate(levels.items()):
            rng = np.random.default_rng([seed, index])
            runs.append(MethodRun(method, seed, _report(rng, und, gen, shift=shift if method == "unimrg" else 0)))
    return Study(runs)


def _items(study: Study, method: str, kind: str) -> np.ndarray:
    return np.array([float(r["correct"]) for run in study.of(method) for r in run.eval_report["records"]["understanding"]
                     if r["kind"] == kind])


def test_a_paired_test_per_kind_finds_the_kind_that_moved() -> None:
    study = _study()
    [c] = comparisons(study)
    assert (c["arm"], c["baseline"], c["family"]) == ("unimrg", "und-sft", "p4")
    position = c["metrics"]["understanding.accuracy.position"]
    a, b = _items(study, "unimrg", "position"), _items(study, "und-sft", "position")
    expected = stats.ttest_rel(a, b)
    assert position["test"] == "paired" and position["n"] == len(a) == 180
    assert math.isclose(position["p"], expected.pvalue, rel_tol=1e-9)
    assert math.isclose(position["t"], expected.statistic, rel_tol=1e-9)
    assert math.isclose(position["welch"]["p"], stats.ttest_ind(a, b, equal_var=False).pvalue, rel_tol=1e-9)
    assert math.isclose(position["delta"], a.mean() - b.mean(), abs_tol=1e-12)
    assert position["significant"] and position["p_bonferroni"] == pytest.approx(min(1, expected.pvalue * c["tests"]))
    assert not c["metrics"]["understanding.accuracy.count"]["significant"]
    assert c["metrics"]["understanding.accuracy.color"]["n"] == 0  # a kind the study never asked: no test
    assert c["metrics"]["understanding.accuracy.color"]["p"] is None
    performed = sum(m["p"] is not None for m in c["metrics"].values())  # kinds never asked make no stricter family
    assert c["tests"] == performed < len(c["metrics"]) and c["alpha_corrected"] == pytest.approx(0.05 / performed)


def test_items_that_do_not_line_up_get_welch() -> None:
    study = _study(shift=1)  # unimrg's questions differ from und-sft's: nothing to pair
    position = comparisons(study)[0]["metrics"]["understanding.accuracy.position"]
    expected = stats.ttest_ind(_items(study, "unimrg", "position"), _items(study, "und-sft", "position"),
                               equal_var=False)
    assert position["test"] == "welch" and math.isclose(position["p"], expected.pvalue, rel_tol=1e-9)


def test_arms_are_compared_on_the_seeds_both_have() -> None:
    study = _study()
    study = Study([r for r in study.runs if not (r.method == "unimrg" and r.seed == 2)])
    with pytest.warns(UnigapWarning, match="unimrg has seeds"):
        [c] = comparisons(study)
    position = c["metrics"]["understanding.accuracy.position"]
    kept = Study([r for r in study.runs if r.seed != 2])
    a, b = _items(kept, "unimrg", "position"), _items(kept, "und-sft", "position")
    assert position["n"] == position["n_baseline"] == len(b) == 120 and position["test"] == "paired"
    assert math.isclose(position["p"], stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    assert [d["seed"] for d in position["seed_level"]["deltas"]] == [0, 1]


def test_no_comparison_without_the_baseline_arm_and_the_report_shows_one(tmp_path) -> None:
    study = _study()
    assert comparisons(Study([r for r in study.runs if r.method != "und-sft"])) == []
    built = build_report(study, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert built.results["comparisons"][0]["arm"] == "unimrg"
    assert "unimrg vs und-sft" in html and "significantly better than und-sft on understanding accuracy, position questions" in html


def test_refine_curves_count_the_improved_among_the_prompts_the_verifier_decided() -> None:
    """Free-text prompts are refined but not decided: the improved count is the rate times its own n."""
    from unigap.evaluate.data import FreePrompt
    from unigap.refine.loop import Trajectory
    from unigap.refine.metrics import round_metrics
    from unigap.report.compare import refine_curves
    from unigap.world import parse_prompt

    decided = [Trajectory(parse_prompt(text), images=[0, 0], verified=verdicts, reflections=["x"])
               for text, verdicts in (("a red circle", [False, True]), ("a blue square", [True, True]))]
    free = [Trajectory(FreePrompt(f"free {i}"), images=[0, 0], verified=[None, None], reflections=["x"])
            for i in range(2)]
    rounds = round_metrics(decided + free, 1)
    assert rounds[1]["refined"] == 4 and rounds[1]["improved"]["n"] == 2
    [_, curve] = refine_curves(Study([MethodRun("refine", 0, {"refine": {"rounds": rounds}})]))["refine"]
    assert curve["improved"] == 1 and curve["worse"] == 0


def test_welchs_and_the_seed_level_intervals_of_a_change_stay_within_one() -> None:
    """Every metric is a share: compare on 4 against 3 items read understanding +0.250 [-0.546, +1.046], and over
    two seeds weak generation +0.100 [-3.202, +3.402]."""
    from unigap.report.stats import METRICS, decide, seed_level

    def report(verified: list[bool], shift: int) -> dict:
        gen = [{"index": i, "prompt": f"p{i + shift}", "verified": v, "self_rejected": False, "weak_generation": None}
               for i, v in enumerate(verified)]
        return {"records": {"understanding": [], "generation": gen}}

    generation = next(m for m in METRICS if m.name == "generation.accuracy")
    arm = [MethodRun("a", 0, report([True, False, False], 100))]
    base = [MethodRun("base", 0, report([True, False, True, False], 0))]
    test, welch = decide(arm, base, generation)
    assert test["test"] == "welch" and welch["delta_ci95"] == [-1.0, 1.0]  # (unbounded: about [-1.34, +1.01])
    level = seed_level({0: 0.9, 1: 0.1}, {0: 0.1, 1: 0.8})
    assert level["delta_ci95"] == [-1.0, 1.0]  # (unbounded: ±9 over 2 seeds)
