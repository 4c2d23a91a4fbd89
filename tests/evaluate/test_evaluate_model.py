"""`evaluate` on a random tiny Janus: the report's shape, seed determinism, and reuse of generations."""

from __future__ import annotations

import json

import pytest

from unigap.evaluate import evaluate

KEYS = {
    "understanding": "accuracy",
    "generation": "accuracy",
    "nonunification": "score",
    "weak_generation": "rate",
    "judge": "accuracy",
}


def run(um, n=6, seed=1, batch_size=4):
    """Short answers: a random model never says EOS, so every answer runs to max_new_tokens."""
    return evaluate(um, n, seed, batch_size=batch_size, max_new_tokens=6, progress=False)


@pytest.fixture(scope="module")
def report(um):
    return run(um)


def test_report_has_every_metric_with_n_stderr_and_interval(report):
    for name, key in KEYS.items():
        metric = report[name]
        assert {key, "n", "stderr", "ci95"} <= set(metric), name
        assert metric[key] is None or 0.0 <= metric[key] <= 1.0
        assert metric[key] is None or metric["ci95"][0] <= metric[key] <= metric["ci95"][1]
    for category in report["generation"]["by_category"].values():  # per category too
        assert "ci95" in category and (category["n"] or category["ci95"] is None)
    p_yes = report["nonunification"]["mean_p_yes"]  # a mean: a t-interval, with the sample sd
    from scipy import stats

    values = [r["p_yes"] for r in report["records"]["generation"]]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=p_yes["mean"], scale=stats.sem(values))
    assert p_yes["ci95"] == pytest.approx([max(low, 0.0), min(high, 1.0)])  # (cut to what a P(yes) can be)
    assert report["understanding"]["n"] == report["generation"]["n"] == 6
    assert report["weak_generation"]["n"] == sum(r["self_rejected"] for r in report["records"]["generation"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_same_seed_same_numbers_other_seed_other_images(um, report):
    assert run(um) == report
    other = run(um, seed=2)
    assert [r["p_yes"] for r in other["records"]["generation"]] != [r["p_yes"] for r in report["records"]["generation"]]


def test_generated_images_are_made_once_and_judged_as_made(um, monkeypatch):
    calls = {"generate": 0, "judged": []}
    real_generate, real_judge = um.generate_images, um.judge

    def generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    def judge(images, prompts):
        calls["judged"].extend(images)
        return real_judge(images, prompts)

    monkeypatch.setattr(um, "generate_images", generate)
    monkeypatch.setattr(um, "judge", judge)
    result = run(um, n=5, seed=0, batch_size=2)
    assert calls["generate"] == 3 and len(calls["judged"]) == 5
    assert len(result["records"]["generation"]) == 5
