"""Metric objects: the binomial standard error, empty samples, breakdowns, answer normalisation, and the shared tests
and intervals (Welch, the t-interval) against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from unigap.evaluate import normalize_answer, summarize, summarize_by
from unigap.evaluate.stats import SHARE, paired_difference, summarize_mean, t_interval, welch, welch_from_stats


def test_binary_outcomes_give_binomial_stderr():
    metric = summarize([True, True, False, True], "accuracy")
    assert metric["accuracy"] == 0.75 and metric["n"] == 4
    assert math.isclose(metric["stderr"], math.sqrt(0.75 * 0.25 / 4))


def test_graded_values_give_stderr_of_the_mean():
    metric = summarize([0.1, 0.5, 0.9], "mean")
    assert math.isclose(metric["mean"], 0.5)
    assert math.isclose(metric["stderr"], math.sqrt((0.16 + 0 + 0.16) / 3 / 3))


@pytest.mark.parametrize("values, stderr", [([True] * 5, 0.0), ([False] * 3, 0.0)])
def test_all_equal_outcomes_have_zero_stderr(values, stderr):
    assert summarize(values, "rate")["stderr"] == stderr


def test_empty_sample_is_null_not_nan():
    metric = summarize([], "rate")
    assert metric == {"rate": None, "n": 0, "stderr": None}
    assert json.loads(json.dumps(metric, allow_nan=False)) == metric


def test_breakdown_lists_every_group_even_empty():
    records = [{"g": "a", "ok": True}, {"g": "a", "ok": False}, {"g": "b", "ok": True}]
    groups = summarize_by(records, "g", ("a", "b", "c"), "ok", "accuracy")
    assert list(groups) == ["a", "b", "c"]
    assert groups["a"]["accuracy"] == 0.5 and groups["a"]["n"] == 2
    assert groups["b"]["accuracy"] == 1.0 and groups["c"]["n"] == 0 and groups["c"]["accuracy"] is None


@pytest.mark.parametrize(
    "given, expected",
    [
        ("Yes.", "yes"),
        ("  RED \n", "red"),
        ("there are two objects : a small red circle and a large blue square .",
         "There are two objects: a small red circle and a large blue square."),
        ("two!?", "two"),
    ],
)
def test_normalisation_matches(given, expected):
    assert normalize_answer(given) == normalize_answer(expected)


@pytest.mark.parametrize("given, expected", [("no", "yes"), ("red circle", "red"), ("", "yes"), ("tw o", "two"),
                                             ("50", "50%"), ("c", "C++"), ("5", "5$")])  # a symbol is no punctuation
def test_normalisation_keeps_real_differences(given, expected):
    assert normalize_answer(given) != normalize_answer(expected)


A = [0.051, 0.032, 0.047, 0.029, 0.060, 0.038]
B = [0.012, -0.020, 0.004, -0.011, 0.009, -0.003, 0.015, -0.008]


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_welch_from_stats_equals_scipy_on_the_items(alternative):
    expected = stats.ttest_ind(A, B, equal_var=False, alternative=alternative)
    got = welch_from_stats(np.mean(A), np.var(A), len(A), np.mean(B), np.var(B), len(B), alternative=alternative)
    assert welch(A, B, alternative=alternative) == {"n_a": 6, "n_b": 8, **got}
    assert got["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert got["p"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert got["df"] == pytest.approx(expected.df, rel=1e-12)
    two_sided = stats.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert got["delta_ci95"] == pytest.approx(list(two_sided), rel=1e-12)  # two-sided whatever the alternative


@pytest.mark.parametrize(("a", "b"), [([0.1], B), ([0.2, 0.2], [0.1, 0.1]), ([], []), ([0.5, 0.5], [0.5, 0.5])])
def test_welch_is_null_where_undefined(a, b):
    assert welch(a, b) == {"n_a": len(a), "n_b": len(b), "t": None, "df": None, "p": None, "delta_ci95": None}


def test_t_interval_is_scipys_and_the_point_without_spread():
    assert t_interval(0.5, 0.1, 4) == pytest.approx(list(stats.t.interval(0.95, 4, loc=0.5, scale=0.1)), rel=1e-12)
    assert t_interval(0.5, 0.0, 4) == [0.5, 0.5]


def test_the_same_change_to_within_rounding_is_no_variance_and_one_pair_has_no_stderr():
    """Seed means subtract to 0.050000000000000044 and 0.04999999999999993: the same change, where a t-test on the
    rounding would report p ~ 1e-30."""
    out = paired_difference([0.50, 0.55, 0.60], [0.55, 0.60, 0.65])  # (the sign test: all 3 pairs went up)
    assert out["t"] is None and out["p"] == 0.25 and out["test"] == "sign" and out["stderr"] == 0.0
    assert out["ci95"] is None  # (a point interval would claim the change certain)
    assert paired_difference([0.50, 0.55], [0.50, 0.55 + 1e-17])["p"] == 1.0  # no change, to within rounding
    varied = paired_difference([0.50, 0.55, 0.60], [0.55, 0.61, 0.64])
    assert varied["p"] == pytest.approx(stats.ttest_rel([0.55, 0.61, 0.64], [0.50, 0.55, 0.60]).pvalue)
    single = paired_difference([0.0], [1.0])
    assert single["delta"] == 1.0 and single["n"] == 1 and single["stderr"] is None and single["p"] is None


def test_a_paired_change_of_verdicts_stays_within_one_either_way():
    """(compare on 2 items read generation −0.250 [−1.046, +0.546], weak generation ±2.9: past any change a verdict
    can make.)"""
    out = paired_difference([True, False, True, False], [False, True, True, False])
    assert out["ci95"] == [-1.0, 1.0]
    graded = paired_difference([0.2, 0.9, 0.5], [0.9, 0.1, 0.5])  # (not verdicts: its own interval)
    assert graded["ci95"][0] < -1.0 and graded["ci95"][1] > 0.5
    assert welch([1, 0], [0, 1, 1])["delta_ci95"] == [-1.0, 1.0]  # (items that do not line up: [-2.9, 2.6])
    assert welch([0.2, 0.9], [0.1, 0.5, 0.9])["delta_ci95"][0] < -1.0


def test_a_graded_mean_keeps_its_interval_within_what_the_quantity_can_be():
    """(A mean P(yes) of 0.975 over 4 images read [0.895, 1.055].)"""
    values = [0.99, 0.99, 0.99, 0.93]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert high > 1
    assert summarize_mean(values, SHARE)["ci95"] == pytest.approx([low, 1.0])
    assert summarize_mean(values)["ci95"] == pytest.approx([low, high])  # (unbounded: scipy's)
    assert summarize_mean([0.5], SHARE)["ci95"] is None and summarize_mean([], SHARE)["ci95"] is None
