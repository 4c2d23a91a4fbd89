"""Summaries and Welch tests against scipy on fixed inputs, and their undefined cases (null, never NaN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from unigap.diagnose.stats import cosines, depth_trend, group_summary, summary, welch
from unigap.diagnose.sweep import length_response

INTER = [0.012, -0.020, 0.004, -0.011, 0.009, -0.003, 0.015, -0.008]
INTRA = [0.051, 0.032, 0.047, 0.029, 0.060, 0.038]


def test_summary_matches_scipy_t_interval() -> None:
    s = summary(INTRA, "cos")
    lo, hi = stats.t.interval(0.95, len(INTRA) - 1, loc=np.mean(INTRA), scale=stats.sem(INTRA))
    assert s["cos_n"] == 6
    assert s["cos_mean"] == pytest.approx(np.mean(INTRA))
    assert s["cos_std"] == pytest.approx(np.std(INTRA, ddof=1))
    assert s["cos_ci95"] == pytest.approx([lo, hi])
    assert (s["cos_median"], s["cos_min"], s["cos_max"]) == (np.median(INTRA), min(INTRA), max(INTRA))


def test_summary_of_too_few_values_is_null_not_nan() -> None:
    assert summary([], "x") == {f"x_{k}": None for k in ("mean", "std", "ci95", "median", "min", "max")} | {"x_n": 0}
    one = summary([0.5], "x")
    assert one["x_mean"] == 0.5 and one["x_std"] is None and one["x_ci95"] is None


def test_an_interval_stays_within_what_its_quantity_can_be() -> None:
    """ρ of a few batches, one large: its t-interval reached below 0, which no norm ratio can; w_U's past 1."""
    rho = group_summary(np.array([[100.0, 1.0, 0.0], [0.01, 1.0, 0.0], [0.01, 1.0, 0.0]]))
    assert rho["ratio_ci95"][0] == 0.0 and rho["ratio_ci95"][1] > 10
    assert summary([0.99, 0.2, 1.0], "cos", (-1.0, 1.0))["cos_ci95"][1] == 1.0
    assert summary([0.99, 0.2, 1.0], "x")["x_ci95"][1] > 1.0  # (unbounded by default)


def test_welch_matches_scipy() -> None:
    result = welch(INTRA, INTER)
    expected = stats.ttest_ind(INTRA, INTER, equal_var=False)
    assert result["t"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["df"] == pytest.approx(expected.df)
    assert (result["n_a"], result["n_b"]) == (6, 8)
    # by hand: Welch–Satterthwaite
    va, vb = np.var(INTRA, ddof=1) / 6, np.var(INTER, ddof=1) / 8
    assert result["t"] == pytest.approx((np.mean(INTRA) - np.mean(INTER)) / math.sqrt(va + vb))
    assert result["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 5 + vb**2 / 7))


@pytest.mark.parametrize(("a", "b"), [([0.1], INTER), ([0.2, 0.2], [0.1, 0.1]), ([], [])])
def test_welch_undefined_cases_are_null(a: list[float], b: list[float]) -> None:
    result = welch(a, b)
    assert result["t"] is None and result["p"] is None and result["df"] is None


def test_cosines_skip_zero_norms_and_group_summary_flags_all_zero() -> None:
    triples = np.array([[4.0, 9.0, 3.0], [0.0, 1.0, 0.0], [1.0, 1.0, -1.0]])
    cos, undefined = cosines(triples)
    np.testing.assert_allclose(cos, [0.5, -1.0])
    assert undefined == 1
    assert group_summary(np.zeros((3, 3))) == {"zero_gradient": True}
    s = group_summary(triples)
    np.testing.assert_allclose(s["ratio_mean"], np.mean([2 / 3, 0.0, 1.0]))


def test_depth_trend_is_spearman_and_null_without_variation() -> None:
    rows = [{"layer": i, "cos_mean": c} for i, c in enumerate([0.01, -0.02, 0.03, 0.05])]
    expected = stats.spearmanr([0, 1, 2, 3], [0.01, -0.02, 0.03, 0.05])
    assert depth_trend(rows)["spearman_r"] == pytest.approx(expected.statistic)
    assert depth_trend([{"layer": i, "cos_mean": 0.0} for i in range(4)])["spearman_r"] is None


def test_the_depth_trends_p_is_exact_over_the_few_layers_of_a_small_model() -> None:
    """scipy's t-approximation gave a perfectly monotone 4-layer profile p 0, though the smallest p 4 layers can
    give is 2/24 (two-sided, exact over the 24 orderings)."""
    monotone = depth_trend([{"layer": i, "cos_mean": c} for i, c in enumerate([0.01, 0.02, 0.03, 0.05])])
    assert monotone["spearman_r"] == pytest.approx(1.0) and monotone["p"] == pytest.approx(2 / 24)
    mixed = depth_trend([{"layer": i, "cos_mean": c} for i, c in enumerate([0.01, -0.02, 0.03, 0.05])])  # ρ 0.8
    assert mixed["p"] == pytest.approx(8 / 24)  # (the orderings as far from no trend: |ρ| ≥ 0.8; scipy: 0.2)


def test_the_length_sweep_leaves_an_overflowed_probe_out_and_its_json_holds_no_nan() -> None:
    """A probe whose gradient overflowed stopped the report from being written (JSON has no NaN)."""
    out = length_response({"short": [1.0, math.nan, 0.5], "long": [2.0, math.inf, 1.5]},
                          {"short": [2.0, 2.0, 2.0], "long": [8.0, 8.0, 8.0]}, [1.0, 1.0, math.inf], 4.0)
    json.dumps(out, allow_nan=False)
    assert out["conditions"]["short"]["samples"]["ratio"] == [1.0, None, 0.5]
    assert out["conditions"]["long"]["ratio_nonfinite"] == 1 and out["loglog_slope"] is not None
