"""Metric objects: a value with its sample size and standard error, overall and per group.

Why one shape everywhere: later stages (DPO, the study) compare runs with t-tests, which need n and the
standard error next to every number, and a reader should never wonder which of several layouts a metric uses.

An empty sample (n = 0, e.g. no self-rejected generations) has no value: value and stderr are `None`
(JSON null), never NaN, so the report stays valid JSON and nothing divides by zero.

The tests and intervals every later stage reports (the paired t-test, Welch's t-test, the t-interval, `finite` for
JSON) live here once, on the lowest floor that all of their users may import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

Alternative = Literal["two-sided", "less", "greater"]  # scipy's `alternative`: the hypothesis against mean_a = mean_b
CONFIDENCE = 0.95  # the level of every interval the reports give


def finite(value: Any) -> float | None:
    """A float for JSON, or None for missing / NaN / ±inf, or an integer beyond a float (JSON's 400-digit number):
    JSON has no NaN, and an undefined value is null."""
    try:
        return None if value is None or not math.isfinite(float(value)) else float(value)
    except OverflowError:
        return None


UNBOUNDED = (-math.inf, math.inf)  # the range of a quantity, to which its interval is cut
SHARE = (0.0, 1.0)


def t_interval(mean: float, stderr: float, df: float, confidence: float = CONFIDENCE,
               bounds: tuple[float, float] = UNBOUNDED) -> list[float]:
    """mean ± the two-sided t quantile (df degrees of freedom) × stderr, the one t-interval of every report, cut to
    the quantity's `bounds` (a cosine's interval does not reach past 1); the point itself when stderr is 0, where
    `scipy.stats.t.interval` gives NaN."""
    from scipy import stats

    half = float(stats.t.ppf((1 + confidence) / 2, df)) * stderr
    return [max(mean - half, bounds[0]), min(mean + half, bounds[1])]


def share_interval(mean: float, stderr: float, df: float) -> list[float]:
    """`t_interval` cut to [0, 1], for a quantity that is a share (an AUC, a mean of accuracies over seeds): at a
    value near 0 or 1 the interval would otherwise reach past it."""
    return t_interval(mean, stderr, df, bounds=SHARE)


def welch_from_stats(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int,
                     alternative: Alternative = "two-sided", bounds: tuple[float, float] = UNBOUNDED
                     ) -> dict[str, Any]:
    """Welch's t-test of mean_a − mean_b from each side's mean, population variance (ddof 0, as `summarize` keeps it)
    and n, for reports that keep no items; equals `scipy.stats.ttest_ind(a, b, equal_var=False, alternative=...)` on
    the items. `t`, `df`, `p` and `delta_ci95`, the two-sided t-interval of the difference whatever `alternative` (cut
    to the difference's `bounds`); all null where the test is undefined (n < 2 on a side, or no variance on either)."""
    from scipy import stats

    out: dict[str, Any] = {"t": None, "df": None, "p": None, "delta_ci95": None}
    if n_a < 2 or n_b < 2:
        return out
    sq_a, sq_b = var_a / (n_a - 1), var_b / (n_b - 1)  # squared standard errors s²/n with s² = var·n/(n−1)
    se = math.sqrt(sq_a + sq_b)
    if se == 0:
        return out
    # scipy computes the Welch–Satterthwaite df but returns it only from `ttest_ind` on items
    df = (sq_a + sq_b) ** 2 / (sq_a**2 / (n_a - 1) + sq_b**2 / (n_b - 1))
    test = stats.ttest_ind_from_stats(mean_a, math.sqrt(sq_a * n_a), n_a, mean_b, math.sqrt(sq_b * n_b), n_b,
                                      equal_var=False, alternative=alternative)
    interval = [finite(bound) for bound in t_interval(mean_a - mean_b, se, df, bounds=bounds)]
    return {"t": finite(test.statistic), "df": finite(df), "p": finite(test.pvalue),
            "delta_ci95": None if None in interval else interval}


def welch(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alternative: Alternative = "two-sided"
          ) -> dict[str, Any]:
    """`welch_from_stats` on two samples of items, with their sizes `n_a` and `n_b`: Welch's t-test of mean(a) −
    mean(b), `scipy.stats.ttest_ind(a, b, equal_var=False)`, with the same null where it is undefined."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    moments = [(float(v.mean()), float(v.var()), len(v)) if len(v) else (math.nan, 0.0, 0) for v in (x, y)]
    return {"n_a": len(x), "n_b": len(y), **welch_from_stats(*moments[0], *moments[1], alternative=alternative,
                                                             bounds=difference_bounds([*x, *y]))}


def difference_bounds(values: Sequence[float]) -> tuple[float, float]:
    """Where a difference of means of `values` can lie: within [-1, 1] for 0/1 outcomes (verdicts), else anywhere."""
    return (-1.0, 1.0) if all(v in (0.0, 1.0) for v in values) else UNBOUNDED


def summarize(values: Sequence[float | bool], key: str) -> dict[str, Any]:
    """`{key: mean, "n": n, "stderr": sqrt(var / n)}` with the population variance (ddof = 0).

    For 0/1 outcomes the population variance is p(1 - p), so this is the binomial standard error
    sqrt(p(1 - p) / n); for graded values (e.g. P(yes)) it is the plain standard error of the mean.
    """
    n = len(values)
    if n == 0:
        return {key: None, "n": 0, "stderr": None}
    floats = [float(v) for v in values]
    mean = math.fsum(floats) / n
    variance = math.fsum((v - mean) ** 2 for v in floats) / n
    return {key: mean, "n": n, "stderr": math.sqrt(variance / n)}


def summarize_mean(values: Sequence[float], bounds: tuple[float, float] = UNBOUNDED) -> dict[str, Any]:
    """`summarize` of a graded quantity (key `mean`) with its t-interval cut to the quantity's `bounds`: a mean
    P(yes) of 0.98 over 5 images has no interval past 1."""
    metric = summarize(values, "mean")
    metric["ci95"] = _mean_interval(metric, bounds)
    return metric


def _mean_interval(metric: dict[str, Any], bounds: tuple[float, float] = UNBOUNDED) -> list[float] | None:
    """The t-interval (sample sd, n − 1 df) of a `summarize`d mean; null below 2 values."""
    n, mean, stderr = metric["n"], metric["mean"], metric["stderr"]
    return None if mean is None or n < 2 else t_interval(mean, stderr * math.sqrt(n / (n - 1)), n - 1, bounds=bounds)


def with_ci(metric: dict[str, Any], key: str) -> dict[str, Any]:
    """The metric (a share of n outcomes) with `ci95`, Wilson's score interval: within [0, 1] at small n and at
    shares of 0 or 1, where value ± 1.96 stderr is not (null when the value is). A graded mean (the VQA soft score)
    is read as the share of round(value · n) outcomes."""
    from scipy.stats import binomtest

    value, n = metric[key], metric["n"]
    interval = None if value is None else binomtest(round(value * n), n).proportion_ci(0.95, method="wilson")
    metric["ci95"] = None if interval is None else [float(interval.low), float(interval.high)]
    return metric


# The value keys of metrics that are shares of n items (the VQA soft score, a graded mean, is read as one: `with_ci`).
SHARES = ("accuracy", "score", "vqa_score", "rate", "precision", "value")


def with_cis(node: Any) -> Any:
    """Every metric in `node` (a dict with n and stderr, at any depth) given its `ci95` in place: Wilson's interval
    for a share (`with_ci`), the t-interval (sample sd, n − 1 df) for a mean; one it already has is kept."""
    if isinstance(node, list):
        for item in node:
            with_cis(item)
    if not isinstance(node, dict):
        return node
    for value in node.values():
        with_cis(value)
    if {"n", "stderr"} <= node.keys() and "ci95" not in node:
        share = next((key for key in SHARES if key in node), None)
        if share is not None:
            with_ci(node, share)
        elif "mean" in node:
            node["ci95"] = _mean_interval(node)
    return node


def as_percent(metric: dict[str, Any], key: str = "value") -> dict[str, Any]:
    """A share's metric (its value, stderr and ci95) × 100, for rates the papers give in percent (win rates)."""
    scaled = {name: None if metric.get(name) is None else 100 * metric[name] for name in (key, "stderr")}
    interval = metric.get("ci95")
    return {**metric, **{k: v for k, v in scaled.items() if k in metric},
            "ci95": None if interval is None else [100 * bound for bound in interval]}


def summarize_by(
    records: Iterable[dict[str, Any]], group: str, groups: Sequence[str], outcome: str, key: str
) -> dict[str, dict[str, Any]]:
    """`summarize` of `record[outcome]` within each value of `record[group]`; every group listed, even empty."""
    buckets: dict[str, list[Any]] = {name: [] for name in groups}
    for record in records:
        buckets.setdefault(record[group], []).append(record[outcome])
    return {name: summarize(values, key) for name, values in buckets.items()}


def summarize_grouped(
    records: Sequence[dict[str, Any]], outcome: str, key: str, group: str, groups: Sequence[str], label: str
) -> dict[str, Any]:
    """`summarize` of `record[outcome]` over all records, plus its `summarize_by` breakdown under `label`."""
    overall = summarize([record[outcome] for record in records], key)
    return {**overall, label: summarize_by(records, group, groups, outcome, key)}


def paired_difference(before: Sequence[float | bool], after: Sequence[float | bool],
                      bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """after − before on the same items (same prompts and sampling seeds): the mean change with n, stderr, a 95%
    t-interval and the two-sided paired t-test's t and p (`scipy.stats.ttest_rel`), `test` "paired t". Without
    variance the t-test is undefined (the interval is then the point): no change anywhere is no evidence of one (t
    0, p 1, as a sign test gives); the same non-zero change on all n pairs is decided by the sign test (`test`
    "sign", t and the interval null, p = 2 × 0.5ⁿ: every pair moved the same way, by an amount no spread bounds).
    "The same" is to within float rounding: seed means such as 0.55 − 0.50 and 0.60 − 0.55 differ in their last
    bits, which a t-test would read as certainty. One pair has no standard error and no test (null). Outcomes of 0
    or 1 (verdicts) change by at most 1 either way: their interval is cut to [-1, 1]; `bounds`, a change's range the
    caller knows otherwise (of seed means of shares, also [-1, 1])."""
    from scipy import stats

    if len(before) != len(after):
        raise ValueError(f"paired samples differ in length: {len(before)} vs {len(after)}")
    before, after = [float(v) for v in before], [float(v) for v in after]
    changes = [b - a for a, b in zip(before, after, strict=True)]
    out = summarize(changes, "delta")
    n, delta = out["n"], out["delta"]
    out |= {"ci95": None, "t": None, "p": None, "test": None}
    if n < 2:
        return out | {"stderr": None}
    rounding = 1e-12 * max(1.0, *(abs(c) for c in changes))
    varies = max(changes) - min(changes) > rounding
    sd = math.sqrt(math.fsum((c - delta) ** 2 for c in changes) / (n - 1)) if varies else 0.0
    out["stderr"] = sd / math.sqrt(n)  # the sample sd, as the interval and the test use (summarize's is ddof 0)
    out["ci95"] = t_interval(delta, out["stderr"], n - 1, bounds=bounds or difference_bounds([*before, *after]))
    if varies:
        test = stats.ttest_rel(after, before)
        out["t"], out["p"], out["test"] = float(test.statistic), float(test.pvalue), "paired t"
    elif abs(delta) <= rounding:
        out["t"], out["p"], out["test"] = 0.0, 1.0, "paired t"
    else:  # (a t of ±infinity: the largest effect there can be was reported as untested, "not reproduced")
        out["p"], out["test"], out["ci95"] = min(1.0, 2 * 0.5**n), "sign", None
    return out
