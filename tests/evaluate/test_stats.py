"""Metric objects: the binomial standard error, empty samples, breakdowns, and answer normalisation."""

from __future__ import annotations

import json
import math

import pytest

from unigap.evaluate import normalize_answer, summarize, summarize_by


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


@pytest.mark.parametrize("given, expected", [("no", "yes"), ("red circle", "red"), ("", "yes"), ("tw o", "two")])
def test_normalisation_keeps_real_differences(given, expected):
    assert normalize_answer(given) != normalize_answer(expected)
