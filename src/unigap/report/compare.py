"""Arm against arm: each arm that names a baseline arm (`unigap.arms.Arm.baseline`) compared with it directly.

Why: some claims are about two arms, not an arm and the base. UniMRG's is that generating the maps helps beyond
the same understanding SFT without them (`unimrg` vs `und-sft`); R3's loop has to beat best-of-N at the same
sampling budget (`refine` vs `best-of-n`). Each comparison covers the headline metrics and understanding accuracy
per question kind (what "helps spatial understanding" is checked on).

Test: both arms are evaluated on the same items with the same sampling seeds, so where the two sides' per-item
records line up (same seed, item index and question or prompt), the test is **paired**: a t-test on the per-item
differences pooled over seeds, with its 95% CI, on the seeds both arms have. Otherwise Welch on the pooled items;
Welch's test is kept beside it (`welch`) as for every arm against the base (`stats.decide`). Bonferroni over the
comparison's own tests (its metrics × kinds). Undefined values are null.
"""

from __future__ import annotations

from typing import Any

from unigap.arms import ARMS
from unigap.evaluate.stats import as_percent, with_ci
from unigap.report.stats import StatsOptions, alpha_over, corrected, decide, pool, shared_seeds, tests_performed
from unigap.study.results import METRICS, Metric, Study, sample
from unigap.world import QUESTION_KINDS

KIND_METRICS = tuple(
    Metric(f"understanding.accuracy.{kind}", f"{kind} questions", "understanding", "correct", ("kind", kind))
    for kind in QUESTION_KINDS
)


def compare(study: Study, arm: str, baseline: str, options: StatsOptions) -> dict[str, Any]:
    """One arm against its baseline on every headline metric and every question kind."""
    rows = {}
    arm_runs, baseline_runs = shared_seeds(study.of(arm), study.of(baseline))
    for metric in (*METRICS, *KIND_METRICS):
        test, paper = decide(arm_runs, baseline_runs, metric)
        compared = test["compared"]  # both arms' levels and n on the seeds they share
        rows[metric.name] = {
            "label": metric.label, "higher_is_better": metric.higher_is_better, "arm": compared["arm"],
            "baseline": compared["baseline"], "n": compared["n"], "n_baseline": compared["n_baseline"], **test,
            "welch": paper,
        }  # fmt: skip
    tests = tests_performed(rows.values())  # as the study's family: the tests performed
    for row in rows.values():
        row["p_bonferroni"], row["significant"] = corrected(row["p"], tests, options.alpha)
    return {"arm": arm, "baseline": baseline, "family": ARMS[arm].family, "tests": tests,
            "alpha_corrected": alpha_over(options.alpha, tests), "metrics": rows}


def comparisons(study: Study, options: StatsOptions = StatsOptions()) -> list[dict[str, Any]]:
    """Every arm of the study that names a baseline arm the study also ran, against it, in report order."""
    ran = set(study.methods())
    return [compare(study, name, ARMS[name].baseline, options)  # type: ignore[arg-type]
            for name in study.methods() if name in ARMS and ARMS[name].baseline in ran]


def kind_levels(study: Study) -> dict[str, dict[str, dict[str, Any]]]:
    """Understanding accuracy per question kind of every method, pooled over seeds: `{method: {kind: {accuracy,
    n}}}` (levels only; the tests are the comparisons')."""
    out = {}
    for method in study.methods():
        pooled = {metric.where[1]: pool([sample(run, metric) for run in study.of(method)])  # type: ignore[index]
                  for metric in KIND_METRICS}
        out[method] = {kind: {"accuracy": s.mean, "n": s.n} for kind, s in pooled.items()}
    return out


def refine_curves(study: Study) -> dict[str, list[dict[str, Any]]]:
    """Per refine arm (its evaluation has `refine.rounds`): accuracy after each round pooled over seeds, with the
    improved and worse counts; what the report draws next to best-of-N and the oracle."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for method in study.methods():
        runs = [run for run in study.of(method) if run.eval_report.get("refine")]
        if not runs:
            continue
        rounds = [run.eval_report["refine"]["rounds"] for run in runs]
        curve = []
        for index in range(min(len(r) for r in rounds)):
            rows = [r[index] for r in rounds]
            n = sum(row["n"] for row in rows)
            entry: dict[str, Any] = {"round": index, "n": n,
                                     "accuracy": sum(row["accuracy"] * row["n"] for row in rows) / n}
            for key in ("improved", "worse"):
                if rows[0].get(key):  # (absent or null at round 0)
                    entry[key] = sum(round(row[key]["rate"] * row[key]["n"]) for row in rows  # over its decided
                                     if row[key]["rate"] is not None)
            curve.append(entry)
        curves[method] = curve
    return curves


def win_rates(study: Study) -> dict[str, dict[str, Any]]:
    """Per trained arm whose evaluations hold one: the understanding win rate (SPEC §2, on the base's images) pooled
    over seeds, wins over the images whose verdict changed, × 100 with Wilson's 95% CI; and each seed's."""
    out = {}
    for method in study.methods():
        per_seed = [{"seed": run.seed, **run.eval_report["win_rate"]} for run in study.of(method)
                    if run.eval_report.get("win_rate")]
        if not per_seed:
            continue
        wins, n = sum(row["wins"] for row in per_seed), sum(row["n"] for row in per_seed)
        pooled = as_percent(with_ci({"value": wins / n if n else None, "n": n}, "value"))
        out[method] = pooled | {"wins": wins, "per_seed": [{k: row[k] for k in ("seed", "value", "n")}
                                                          for row in per_seed]}
    return out


def guard_stops(study: Study) -> dict[str, list[dict[str, Any]]]:
    """Per arm, the seeds whose self-improvement run its audit guard stopped (the arm was evaluated at the last epoch
    the guard let through): the report must not show them as finished runs without saying so."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in study.runs:
        guard = run.eval_report.get("guard")
        if guard and guard.get("stopped"):
            out.setdefault(run.method, []).append({"seed": run.seed, **guard})
    return out
