"""Statistics against direct scipy / hand computations on constructed studies."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from synthetic_study import SEEDS, STEPS

from unigap.errors import UnigapWarning, UserError
from unigap.evaluate.stats import welch_from_stats
from unigap.report import BASE, METRICS, MethodRun, StatsOptions, Study, compute_stats, csv_rows, load_study, write_csv
from unigap.report.stats import pool, seed_interval
from unigap.study.results import Sample, as_study


@pytest.fixture(scope="module")
def results(study: Study) -> dict:
    return compute_stats(study)


def _items(study: Study, method: str, records: str, outcome: str) -> np.ndarray:
    return np.array(
        [
            float(r[outcome])
            for run in study.of(method)
            for r in run.eval_report["records"][records]
            if r[outcome] is not None
        ]
    )


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_welch_equals_scipy_on_items_pooled_over_seeds(study, results, metric):
    """The paper's test, kept beside the deciding one in every row."""
    method, base = (
        _items(study, "und-only", metric.records, metric.outcome),
        _items(study, BASE, metric.records, metric.outcome),
    )
    expected = stats.ttest_ind(method, base, equal_var=False)
    row = results["results"]["und-only"][metric.name]
    got = row["welch"]
    assert row["n"] == len(method) and math.isclose(row["delta"], method.mean() - base.mean(), abs_tol=1e-12)
    assert math.isclose(got["t"], expected.statistic, rel_tol=1e-9)
    assert math.isclose(got["p"], expected.pvalue, rel_tol=1e-9, abs_tol=1e-300)
    assert math.isclose(got["df"], expected.df, rel_tol=1e-9)
    np.testing.assert_allclose(got["delta_ci95"], expected.confidence_interval(0.95), rtol=1e-9)


def test_the_paired_test_decides_where_the_items_line_up(study, results):
    """Base and arm share items and sampling seeds, so scipy's paired t-test on them decides (p, interval,
    Bonferroni); an arm whose items do not line up with the base's is decided by Welch's test."""
    metric = METRICS[1]  # generation accuracy: one outcome per prompt, present on both sides
    arm, base = (_items(study, m, metric.records, metric.outcome) for m in ("und-only", BASE))
    expected = stats.ttest_rel(arm, base)
    got = results["results"]["und-only"][metric.name]
    assert got["test"] == "paired" and got["df"] == len(arm) - 1
    assert math.isclose(got["p"], expected.pvalue, rel_tol=1e-9) and math.isclose(got["t"], expected.statistic)
    np.testing.assert_allclose(got["delta_ci95"], expected.confidence_interval(0.95), rtol=1e-9)
    assert got["p_bonferroni"] == min(1.0, got["p"] * results["bonferroni"]["tests"])
    shifted = Study([MethodRun(r.method, r.seed + (10 if r.method == "und-only" else 0), r.eval_report, r.log_rows)
                     for r in study.runs], study.config)
    welch_row = compute_stats(shifted)["results"]["und-only"][metric.name]
    assert welch_row["test"] == "welch" and welch_row["p"] == welch_row["welch"]["p"] != got["p"]


def test_the_seed_level_test_is_scipys_paired_test_over_seed_means(study, results):
    """Beside the item-level test, the one over the seeds' differences, which counts the training runs' variation."""
    row = results["results"]["und-only"]["generation.accuracy"]
    arm, base = ([s["value"] for s in results["results"][m]["generation.accuracy"]["per_seed"]] for m in ("und-only", BASE))
    expected = stats.ttest_rel(arm, base)
    seeds = row["seed_level"]
    assert [d["seed"] for d in seeds["deltas"]] == list(SEEDS) and seeds["df"] == len(SEEDS) - 1
    assert [d["delta"] for d in seeds["deltas"]] == pytest.approx(np.subtract(arm, base).tolist(), abs=1e-12)
    assert math.isclose(seeds["p"], expected.pvalue, rel_tol=1e-9) and math.isclose(seeds["t"], expected.statistic)
    np.testing.assert_allclose(seeds["delta_ci95"], expected.confidence_interval(0.95), rtol=1e-9)
    assert seeds["p"] != row["p"]
    rows = {(r["method"], r["metric"]): r for r in csv_rows(results)}
    assert rows[("und-only", "generation.accuracy")]["p_seeds"] == seeds["p"]


def test_a_seed_the_arm_lacks_is_left_out_of_the_base_too(study):
    """Each seed draws its own items: an arm equal to the base on seeds 0 and 1, without seed 2, is no change (the
    base pooled over all three seeds would give a difference of seed 2's level, and a test of it)."""
    runs = [r for r in study.runs if r.method == BASE]
    runs += [MethodRun("und-only", r.seed, r.eval_report) for r in runs if r.seed != SEEDS[-1]]
    with pytest.warns(UnigapWarning, match=r"und-only has seeds \[0, 1\] and base \[0, 1, 2\]: they are compared on "
                                           r"the seeds both have, \[0, 1\]"):
        results = compute_stats(Study(runs))
    for metric in METRICS:
        row = results["results"]["und-only"][metric.name]
        assert row["delta"] == 0 and row["test"] == "paired" and row["p"] == 1.0, metric.name
        assert row["seeds"] == 2 and [d["delta"] for d in row["seed_level"]["deltas"]] == [0, 0]
        compared = row["compared"]  # the levels Δ is the difference of: both on seeds 0 and 1
        assert compared["seeds"] == [0, 1] and compared["arm"] == compared["baseline"] == row["pooled"]
        assert compared["n"] == compared["n_baseline"] == row["n"]
    other_seeds = [r for r in study.runs if r.method == BASE] + [
        MethodRun("und-only", r.seed + 10, r.eval_report) for r in study.of("und-only")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no seed in common: two independent samples, compared whole
        row = compute_stats(Study(other_seeds))["results"]["und-only"]["generation.accuracy"]
    assert row["test"] == "welch" and row["seed_level"]["deltas"] == [] and row["seed_level"]["p"] is None


def test_a_seed_where_one_side_has_no_items_of_a_metric_is_left_out_of_that_metric(study):
    """An arm that self-accepts every image of seed 2 has no weak-generation outcome there: the base's seed-2 items
    would otherwise count against the arm's seeds 0 and 1 (a Δ of seed 2's level, not the arm's change)."""
    import copy

    runs = [r for r in study.runs if r.method == BASE]
    arm = [MethodRun("und-only", r.seed, copy.deepcopy(r.eval_report)) for r in runs]
    for record in arm[-1].eval_report["records"]["generation"]:
        record["weak_generation"] = None
    with pytest.warns(UnigapWarning, match=r"no weak_generation.rate items on one side of seed\(s\) \[2\]"):
        row = compute_stats(Study(runs + arm))["results"]["und-only"]["weak_generation.rate"]
    assert row["delta"] == 0 and row["compared"]["seeds"] == [0, 1]
    assert row["compared"]["n"] == row["compared"]["n_baseline"] == row["n"] > 0


def test_weak_generation_counts_only_self_rejected_images(study, results):
    rejected = sum(r["self_rejected"] for run in study.of("joint") for r in run.eval_report["records"]["generation"])
    assert results["results"]["joint"]["weak_generation.rate"]["n"] == rejected


def test_summaries_without_records_give_the_same_test(study, results):
    """Reports lacking per-item records are tested exactly from each seed's mean, n and stderr."""

    def summarised(run: MethodRun) -> MethodRun:
        report = {}
        for metric in METRICS:
            x = np.array(
                [
                    float(r[metric.outcome])
                    for r in run.eval_report["records"][metric.records]
                    if r[metric.outcome] is not None
                ]
            )
            section, key = metric.name.split(".")
            report[section] = {key: x.mean(), "n": len(x), "stderr": math.sqrt(x.var() / len(x))}
        return MethodRun(run.method, run.seed, report)

    got = compute_stats(Study([summarised(run) for run in study.runs]))
    for metric in METRICS:
        a, b = got["results"]["gen-only"][metric.name], results["results"]["gen-only"][metric.name]
        assert a["test"] == "welch"  # no items to pair
        assert math.isclose(a["p"], b["welch"]["p"], rel_tol=1e-9)
        assert math.isclose(a["t"], b["welch"]["t"], rel_tol=1e-9)
        assert a["ci95_bootstrap"] is None and b["ci95_bootstrap"] is not None


def test_pool_is_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, 1 + i, 10 + 5 * i) for i in range(3)]
    pooled = pool([Sample(len(p), float(p.mean()), float(p.var()), p) for p in parts])
    allx = np.concatenate(parts)
    assert pooled.n == len(allx)
    assert math.isclose(pooled.mean, allx.mean()) and math.isclose(pooled.var, allx.var())


def test_seed_interval_is_the_t_interval_over_seed_means(results):
    m = results["results"]["und-only"]["understanding.accuracy"]
    means = [s["value"] for s in m["per_seed"]]
    expected = stats.t.interval(0.95, len(means) - 1, loc=np.mean(means), scale=stats.sem(means))
    assert m["seeds"] == len(SEEDS) and math.isclose(m["mean_over_seeds"], np.mean(means))
    np.testing.assert_allclose(m["ci95_seeds"], expected, rtol=1e-12)
    assert seed_interval([0.5]) is None
    assert seed_interval([1.0, 1.0, 0.968]) == [pytest.approx(0.9434, abs=1e-4), 1.0]  # a share stays <= 1


def test_bootstrap_interval_brackets_the_pooled_mean_and_is_reproducible(study, results):
    m = results["results"][BASE]["understanding.accuracy"]
    low, high = m["ci95_bootstrap"]
    assert low < m["pooled"] < high
    se = math.sqrt(m["pooled"] * (1 - m["pooled"]) / m["n"])
    assert math.isclose(high - low, 2 * 1.96 * se, rel_tol=0.15)  # ≈ the normal interval for a proportion
    assert compute_stats(study)["results"][BASE]["understanding.accuracy"]["ci95_bootstrap"] == [low, high]


def test_bonferroni_family_threshold_and_flags(results):
    family = 3 * len(METRICS)
    assert results["bonferroni"] == {"alpha": 0.05, "tests": family, "alpha_corrected": 0.05 / family,
                                     "families": {"p1": {"tests": family, "alpha_corrected": 0.05 / family}}}
    flags = {}
    for method in ("und-only", "gen-only", "joint"):
        for metric, m in results["results"][method].items():
            assert m["significant"] == (m["p"] < 0.05 / family)
            assert math.isclose(m["p_bonferroni"], min(1.0, m["p"] * family))
            flags[method, metric] = m["significant"]
    assert flags["und-only", "understanding.accuracy"]  # +0.25 on 600 items
    assert not flags["joint", "generation.accuracy"]  # no effect built in
    assert results["results"][BASE]["understanding.accuracy"].get("p") is None


def test_each_family_is_also_corrected_over_its_own_arms(study):
    """`joint` renamed to `sft` (a p2 arm): p1 keeps 2 arms' tests, p2 has 1 arm's; the overall family all 3."""
    from dataclasses import replace

    from unigap.report.html import render_html

    renamed = Study([replace(run, method="sft") if run.method == "joint" else run for run in study.runs], study.config)
    results = compute_stats(renamed)
    tests = {f: t["tests"] for f, t in results["bonferroni"]["families"].items()}
    assert tests == {"p1": 2 * len(METRICS), "p2": len(METRICS)} and results["bonferroni"]["tests"] == 3 * len(METRICS)
    for method, own in (("und-only", 2 * len(METRICS)), ("sft", len(METRICS))):
        for m in results["results"][method].values():
            assert m["significant_in_family"] == (m["p"] < 0.05 / own)
            assert math.isclose(m["p_bonferroni_family"], min(1.0, m["p"] * own))
    html = render_html(results, [])
    assert "Per family" in html and "p2: self-improvement" in html and f"{len(METRICS)} tests" in html
    assert f"(p1 {2 * len(METRICS)}, p2 {len(METRICS)} tests)" in html  # the methods say why the counts differ


def test_only_a_multi_task_dpo_study_shows_that_papers_table_and_test(study: Study) -> None:
    """A self-improvement study's report showed the multi-task DPO paper's Janus-Pro-7B deltas and its 9 × 3
    Bonferroni as if they were its own study's reference."""
    from dataclasses import replace

    from unigap.report.html import render_html

    p1 = render_html(compute_stats(study), [])
    p2 = render_html(compute_stats(Study([replace(run, method="sft") if run.method == "joint" else run
                                          for run in study.runs if run.method in (BASE, "joint")])), [])
    for html, shown in ((p1, True), (p2, False)):
        assert ("method (paper, Janus-Pro-7B)" in html) == shown and ("9 × 3" in html) == shown
        assert ("n = 200 per seed, 3 seeds" in html) == shown and "p_welch" in html


@pytest.mark.parametrize("outcome", [5, "yes", float("nan"), -0.5])
def test_a_study_refuses_an_outcome_no_accuracy_averages(study: Study, outcome) -> None:
    """An edited eval.json in a study folder made an accuracy of 2.875 from outcomes of 5, or a traceback ("yes")."""
    import copy

    runs = copy.deepcopy(study.runs)
    runs[0].eval_report["records"]["generation"][3]["verified"] = outcome
    with pytest.raises(UserError, match=rf"the evaluation report of {runs[0].method} seed {runs[0].seed} is not a "
                                        r"`unigap eval` report \(a generation record's 'verified' is "):
        compute_stats(Study(runs, study.config))


def test_undefined_tests_are_null_not_nan():
    constant = {"records": {"understanding": [{"index": i, "correct": True} for i in range(5)], "generation": []}}
    study = Study([MethodRun(BASE, 0, constant), MethodRun("joint", 0, constant)])
    results = compute_stats(study)
    m = results["results"]["joint"]["understanding.accuracy"]
    assert m["welch"]["p"] is None and m["welch"]["t"] is None and not m["significant"] and m["delta"] == 0.0
    assert m["test"] == "paired" and m["p"] == 1.0  # the same outcome on every item: no evidence of a change
    assert m["ci95_seeds"] is None  # one seed
    assert results["results"]["joint"]["generation.accuracy"]["n"] == 0
    json.dumps(results, allow_nan=False)
    assert welch_from_stats(1.0, 0.0, 1, 0.5, 0.25, 5)["p"] is None  # one item on a side


def test_a_level_of_0_or_1_gets_wilsons_interval_not_a_point():
    """0 correct of 600 over 3 seeds: a bootstrap of identical items and the t-interval of identical seed means are
    both [0, 0], as if the level were certain."""
    from scipy.stats import binomtest

    def run(seed: int, correct: bool) -> MethodRun:
        return MethodRun(BASE, seed, {"records": {"understanding": [{"index": i, "correct": correct}
                                                                     for i in range(200)], "generation": []}})

    for correct, count in ((False, 0), (True, 600)):
        level = compute_stats(Study([run(k, correct) for k in range(3)]))["results"][BASE]["understanding.accuracy"]
        wilson = binomtest(count, 600).proportion_ci(0.95, method="wilson")
        assert level["ci95_bootstrap"] == level["ci95_seeds"] == pytest.approx([wilson.low, wilson.high])
        assert level["ci95_bootstrap"][0] < level["ci95_bootstrap"][1]


def test_every_item_flipped_the_same_way_is_decided_by_the_sign_test():
    """Wrong on every item before and right on every one after: neither t-test is defined (no variance anywhere), and
    the largest effect there can be was reported as untested ("not reproduced"). The sign test decides it."""
    def run(method: str, correct: bool) -> MethodRun:
        return MethodRun(method, 0, {"records": {"understanding": [{"index": i, "correct": correct}
                                                                    for i in range(20)], "generation": []}})

    row = compute_stats(Study([run(BASE, False), run("joint", True)]))["results"]["joint"]["understanding.accuracy"]
    assert row["welch"]["p"] is None and row["test"] == "sign" and row["p"] == 2 * 0.5**20 and row["significant"]
    assert row["df"] is None and row["delta_ci95"] is None  # a sign test has neither


def test_the_same_change_on_every_item_is_decided_by_welch():
    """Every item up by 0.25 (a soft score): the paired t-test is undefined (no variance of the differences), so
    Welch's test on the two samples decides, as where the items do not line up."""
    def run(method: str, shift: float) -> MethodRun:
        scores = [0.0, 0.5, 0.25, 0.5, 0.0]
        return MethodRun(method, 0, {"records": {"understanding": [{"index": i, "correct": v + shift}
                                                                    for i, v in enumerate(scores)],
                                                 "generation": []}})

    row = compute_stats(Study([run(BASE, 0.0), run("joint", 0.25)]))["results"]["joint"]["understanding.accuracy"]
    assert row["test"] == "welch" and row["p"] == row["welch"]["p"] is not None and row["delta"] == 0.25


def test_final_losses_against_ln2(results):
    training = results["training"]
    assert set(training) == {"und-only", "gen-only", "joint"}
    assert training["gen-only"]["gen_no_signal"] is True  # ends at ln 2
    assert training["joint"]["gen_no_signal"] is False
    assert training["und-only"]["gen_no_signal"] is None  # und-only does not train generation
    assert training["und-only"]["und_no_signal"] is False
    assert training["gen-only"]["trained"] == ["gen"] and training["joint"]["trained"] == ["und", "gen"]


def test_final_loss_is_the_tail_mean(study):
    rows = study.of("joint")[0].log_rows
    got = compute_stats(study, StatsOptions(loss_tail=10))["training"]["joint"]["per_seed"][0]
    assert got["steps"] == STEPS
    assert math.isclose(got["gen_loss"], np.mean([r["gen_dpo_loss"] for r in rows[-10:]]))
    assert math.isclose(got["und_kl"], np.mean([r["und_kl"] for r in rows[-10:]]))


@pytest.mark.parametrize("final, tolerance, flagged", [(0.70, 0.01, True), (0.71, 0.01, False), (0.71, 0.02, True)])
def test_no_signal_tolerance(final, tolerance, flagged):
    rows = [{"step": 0, "gen_loss": final}]  # the plain `gen_loss` key is read too
    empty = {"records": {"understanding": [], "generation": []}}
    study = Study([MethodRun(BASE, 0, empty), MethodRun("gen-only", 0, empty, rows)])
    training = compute_stats(study, StatsOptions(ln2_tolerance=tolerance))["training"]["gen-only"]
    assert training["gen_no_signal"] is flagged
    assert math.isclose(training["gen_ln2_gap"], final - math.log(2))


def test_diagnostics_are_averaged_over_seeds(study, results):
    d = results["diagnostics"]
    assert list(d) == [BASE]
    cos = [run.diagnostics["inter"]["cos_mean"] for run in study.of(BASE)]
    assert math.isclose(d[BASE]["cos"], np.mean(cos)) and math.isclose(d[BASE]["und_cos"], 0.04)
    assert [s["batches"] for s in d[BASE]["per_seed"]] == [50, 50, 50]


def test_csv_has_one_row_per_method_and_metric(results, tmp_path):
    rows = csv_rows(results)
    assert len(rows) == 4 * len(METRICS)
    assert {(r["method"], r["metric"]) for r in rows} == {(m, x.name) for m in results["methods"] for x in METRICS}
    path = write_csv(results, tmp_path / "results.csv")
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    und = next(r for r in read if r["method"] == "und-only" and r["metric"] == "understanding.accuracy")
    m = results["results"]["und-only"]["understanding.accuracy"]
    assert math.isclose(float(und["p"]), m["p"]) and und["significant"] == "True" and und["test"] == "paired"
    assert math.isclose(float(und["p_welch"]), m["welch"]["p"])
    assert math.isclose(float(und["delta_ci95_low"]), m["delta_ci95"][0])
    assert math.isclose(float(und["alpha_corrected"]), results["bonferroni"]["alpha_corrected"])
    base = next(r for r in read if r["method"] == BASE)
    assert base["p"] == "" and base["significant"] == "" and base["per_seed"].count(":") == len(SEEDS)


def test_results_are_json(results):
    assert json.loads(json.dumps(results, allow_nan=False))["methods"] == [BASE, "und-only", "gen-only", "joint"]


def test_study_round_trips_through_a_results_directory(study, tmp_path):
    (tmp_path / "study.json").write_text(json.dumps(study.config))
    for run in study.runs:
        d = tmp_path / run.method / f"seed{run.seed}"
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(run.eval_report))
        if run.log_rows:
            (d / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.log_rows))
        if run.diagnostics:
            (d / "diagnostics.json").write_text(json.dumps(run.diagnostics))
    loaded = load_study(tmp_path)
    assert loaded.config == study.config
    assert sorted(loaded.runs, key=lambda r: (r.method, r.seed)) == sorted(study.runs, key=lambda r: (r.method, r.seed))


def test_a_study_needs_a_base_and_unique_runs(study, tmp_path):
    with pytest.raises(UserError, match="no 'base' runs"):
        as_study([run for run in study.runs if run.method != BASE])
    with pytest.raises(UserError, match="more than once"):
        as_study([*study.runs, study.runs[0]])
    with pytest.raises(UserError, match="eval.json"):
        load_study(tmp_path)
    with pytest.raises(UserError, match="base seed 0 has neither understanding records"):
        compute_stats(Study([MethodRun(BASE, 0, {"config": {}})]))


def test_over_optimisation_is_flagged_from_trl_diagnostics() -> None:
    """A generation loss far below ln 2 while the chosen images became less likely than under the reference is
    flagged; the same loss with the chosen images raised is not; old logs without the keys give None."""
    from unigap.report.stats import training_summary

    def rows(chosen_shift: float, loss: float = 0.01) -> list[dict]:
        return [{"step": s, "gen_dpo_loss": loss, "und_dpo_loss": math.log(2), "gen/logps/chosen": -100 + chosen_shift,
                 "gen/ref_logps/chosen": -100.0} for s in range(60)]

    def summary(log: list[dict]) -> dict:
        return training_summary("gen-only", [MethodRun("gen-only", 0, {}, log_rows=log)], StatsOptions())

    pushed_down, pulled_up = summary(rows(-20.0)), summary(rows(+5.0))
    assert pushed_down["gen_overoptimised"] is True and pushed_down["gen_chosen_shift"] == pytest.approx(-20.0)
    assert pulled_up["gen_overoptimised"] is False
    assert summary([{"step": 0, "gen_dpo_loss": 0.01}])["gen_overoptimised"] is None
    assert pushed_down["und_overoptimised"] is None  # gen-only does not train understanding


def test_a_seed_without_a_value_is_an_empty_csv_cell_not_none(results) -> None:
    from copy import deepcopy

    gapped = deepcopy(results)
    metric = gapped["results"]["und-only"]["understanding.accuracy"]
    metric["per_seed"][1]["value"] = None
    metric["seed_level"]["deltas"][1]["delta"] = None
    row = next(r for r in csv_rows(gapped) if r["method"] == "und-only" and r["metric"] == "understanding.accuracy")
    seed = metric["per_seed"][1]["seed"]
    assert f"{seed}:;" in row["per_seed"] + ";" and f"{seed}:;" in row["seed_deltas"] + ";"
    assert "None" not in row["per_seed"] + row["seed_deltas"]
