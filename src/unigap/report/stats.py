"""The study's statistics: per-seed and pooled metrics, tests against the base, Bonferroni, final
DPO losses against ln 2, KL, and the gradient diagnostics — as one JSON-serialisable dict.

Choices (SPEC §1: "n = 200 per seed, 3 seeds, Welch t-test per method vs base, Bonferroni over
methods × metrics"):

- **Test** (`test`, `t`, `df`, `p`, `delta_ci95`): base and arm are evaluated on the same items with the same
  sampling seeds, so where their per-item records line up (seed, item index, prompt or question) the deciding test
  is the **paired** t-test on the per-item differences pooled across seeds (3 × 200 = 600 pairs), which removes the
  items' own difficulty from the error (`decide`). Otherwise (an arm evaluated on other items, reports without
  records, or the same non-zero change on every item, where the t-test is undefined) it is Welch's two-sided t-test
  on the pooled per-item outcomes, computed exactly from each seed's mean, n and standard error when there are no
  records; where that is undefined too (every item flipped the same way), the **sign** test of the paired changes (p
  = 2 × 0.5ⁿ, no interval). `delta` is the pooled mean minus the base's over the seeds both have (`compared`: those
  seeds, both levels and n; the level columns cover all of a method's seeds), `delta_ci95` the deciding test's
  interval of that difference (the error bars of the trade-off figure).
- **Seeds**: both sides are compared on the seeds they share (`shared_seeds`; a warning when one lacks some). The
  item-level tests count every seed's items as items, so they cover item sampling, not the variation between
  training runs (in the study a seed also seeds the arm's training). `seed_level` is the paired t-test over the
  per-seed differences of means (k − 1 df), which covers both, beside them; with 3 seeds it is weak.
- **Welch** (`welch`): the paper's test (SPEC §1: "Welch t-test per method vs base") is kept beside it in every
  row, for reading our numbers next to the paper's; a test over 3 seed means could not reach its p = 0.005.
- **CIs of a method's level**: `ci95_seeds` is the t-interval over the seed means (k − 1 df; null for one
  seed) around `mean_over_seeds`; `ci95_bootstrap` is a percentile bootstrap of the pooled per-item mean,
  resampling items within each seed (null without records). Where every item is 0, or every item 1, neither can
  leave the point: both are then Wilson's interval of the pooled count (0 of 600 is [0, 0.006], not certain).
- **Bonferroni**: the family is every test performed, one per method (base excluded) × metric where the test is
  defined (p not null: a metric a model was not evaluated on, or one without variance and without items to pair,
  is no test);
  `alpha_corrected` = α / family size,
  `significant` = p < alpha_corrected, `p_bonferroni` = min(1, p · family size). Each arm's family of methods
  (p1–p4) is also corrected on its own: `p_bonferroni_family`, `significant_in_family` (over that family's tests;
  `bonferroni.families`), for the report's per-family sections. An inference-time arm's understanding tests are
  counted although its model is the base's (Δ = 0 on every item, p = 1): the correction errs on the strict side.
- **Final losses**: a DPO run at batch 1 is noisy per step, so "final" means the mean over the last
  `loss_tail` logged steps; a trained task whose final loss is within `ln2_tolerance` of ln 2 is flagged
  `no_signal` (SPEC: "a generation DPO loss stuck at ln 2 is a stop signal").

Undefined values (no items, one seed, zero variance on both sides) are null, never NaN.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unigap.arms import ARMS
from unigap.errors import UnigapWarning
from unigap.evaluate.stats import CONFIDENCE, finite, paired_difference, share_interval, welch_from_stats, with_ci
from unigap.train.defaults import LN2, OVEROPTIMISED_LOSS
from unigap.study.results import BASE, METRICS, Metric, MethodRun, Sample, Study, keyed, paired, sample
from unigap.train.names import TASKS, trained_tasks

OTHER_FAMILY = "other"  # the family of a method outside the arm registry
TEST_KEYS = ("test", "t", "df", "p", "delta_ci95")  # the deciding test's fields in each row
# a row's `test` in words (the sign test decides a paired comparison whose every pair changed alike)
TEST_LABELS = {"paired": "paired t-test", "sign": "sign test", "welch": "Welch's t-test"}

# the training-log series the report reads, each with the log keys that may hold it (first present wins)
LOG_SERIES: dict[str, tuple[str, ...]] = {
    "und_loss": ("und_dpo_loss", "und_loss"),
    "gen_loss": ("gen_dpo_loss", "gen_loss"),
    "und_kl": ("und_kl",),
    "gen_kl": ("gen_kl",),
    "w_und": ("w_und",),
    "w_gen": ("w_gen",),
    # TRL's DPO diagnostics (runs logged before they existed lack them: the report shows a dash)
    "und_chosen_logp": ("und/logps/chosen",),
    "und_chosen_ref_logp": ("und/ref_logps/chosen",),
    "gen_chosen_logp": ("gen/logps/chosen",),
    "gen_chosen_ref_logp": ("gen/ref_logps/chosen",),
    "und_rejected_logp": ("und/logps/rejected",),
    "und_rejected_ref_logp": ("und/ref_logps/rejected",),
    "gen_rejected_logp": ("gen/logps/rejected",),
    "gen_rejected_ref_logp": ("gen/ref_logps/rejected",),
}
# gradient diagnostics read from diagnostics.json: name -> path of keys
DIAGNOSTIC_FIELDS: dict[str, tuple[str, ...]] = {
    "cos": ("inter", "cos_mean"),
    "ratio": ("inter", "ratio_mean"),
    "ratio_cv": ("inter", "ratio_cv"),
    "und_cos": ("intra", "und_cos_mean"),
    "gen_cos": ("intra", "gen_cos_mean"),
    "und_vs_inter_p": ("intra", "welch_und_vs_inter", "p"),
    "gen_vs_inter_p": ("intra", "welch_gen_vs_inter", "p"),
}


@dataclass(frozen=True)
class StatsOptions:
    """The study's statistical settings, recorded in results.json so a reader can redo the numbers."""

    alpha: float = 0.05
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    loss_tail: int = 50
    ln2_tolerance: float = 0.01


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def pool(samples: Sequence[Sample]) -> Sample:
    """The samples as one: exact pooled mean and population variance (law of total variance)."""
    present = [s for s in samples if s.n]
    n = sum(s.n for s in present)
    if n == 0:
        return Sample(0, None, 0.0, None)
    mean = math.fsum(s.n * s.mean for s in present) / n
    var = math.fsum(s.n * (s.var + (s.mean - mean) ** 2) for s in present) / n
    items = np.concatenate([s.items for s in present]) if all(s.items is not None for s in present) else None
    return Sample(n, mean, var, items)


def shared_seeds(arm_runs: Sequence[MethodRun], baseline_runs: Sequence[MethodRun]
                 ) -> tuple[list[MethodRun], list[MethodRun]]:
    """Both sides on the seeds they share, when they share some but not all (one warning). Each seed draws its own
    items, so a seed one side lacks would compare other items and shift the pooled difference by that seed's level.
    Sides with no seed in common are independent samples of the split and stay whole (Welch's test decides)."""
    arm_seeds, baseline_seeds = {r.seed for r in arm_runs}, {r.seed for r in baseline_runs}
    common = arm_seeds & baseline_seeds
    if not common or arm_seeds == baseline_seeds:
        return list(arm_runs), list(baseline_runs)
    warnings.warn(
        f"{arm_runs[0].method} has seeds {sorted(arm_seeds)} and {baseline_runs[0].method} {sorted(baseline_seeds)}: "
        f"they are compared on the seeds both have, {sorted(common)}", UnigapWarning, stacklevel=2,
    )
    return [r for r in arm_runs if r.seed in common], [r for r in baseline_runs if r.seed in common]


SHARE_CHANGE = (-1.0, 1.0)  # every metric is a share (`seed_interval`): a change of one lies within ±1


def seed_level(arm: dict[int, float | None], baseline: dict[int, float | None]) -> dict[str, Any]:
    """arm − baseline over the seed means the two share (`{seed: mean}`): each seed's difference, and the paired
    t-test over them (k − 1 df) with its interval. The item-level test counts each seed's items as items; with a
    seed that also trains the arm, this one counts the runs' own variation too (null below two seeds)."""
    seeds = sorted(s for s in arm.keys() & baseline.keys() if arm[s] is not None and baseline[s] is not None)
    d = paired_difference([baseline[s] for s in seeds], [arm[s] for s in seeds],  # type: ignore[misc]
                          bounds=SHARE_CHANGE)
    return {"deltas": [{"seed": s, "delta": arm[s] - baseline[s]} for s in seeds],  # type: ignore[operator]
            "t": d["t"], "df": len(seeds) - 1 if d["t"] is not None else None, "p": d["p"], "delta_ci95": d["ci95"]}


Sampled = list[tuple[MethodRun, Sample]]  # each run of a side with its sample of one metric


def _seeds_with_items(arm: Sampled, baseline: Sampled, metric: Metric) -> tuple[Sampled, Sampled]:
    """`shared_seeds` for one metric: sides that share seeds drop a seed where one has items of `metric` and one
    none (a model that self-accepts every image of a seed has no weak-generation outcome there), one warning; else
    the other side's items of that seed would count against the pooled level of different seeds."""
    arm_has, baseline_has = ({run.seed: s.n > 0 for run, s in side} for side in (arm, baseline))
    one_sided = {seed for seed in arm_has.keys() & baseline_has.keys() if arm_has[seed] != baseline_has[seed]}
    if not one_sided or not any(arm_has.values()) or not any(baseline_has.values()):  # (a side without the metric:
        return arm, baseline                                                          # no test, as before)
    warnings.warn(f"{arm[0][0].method} against {baseline[0][0].method}: no {metric.name} items on one side of "
                  f"seed(s) {sorted(one_sided)}, compared without them", UnigapWarning, stacklevel=3)
    return [(run, s) for run, s in arm if run.seed not in one_sided], \
        [(run, s) for run, s in baseline if run.seed not in one_sided]


def decide(arm_runs: Sequence[MethodRun], baseline_runs: Sequence[MethodRun], metric: Metric
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test that decides arm − baseline on `metric` (on their `shared_seeds` with its items), with Welch's and
    the seed-level test beside it: the paired test where the two sides' per-item records line up and it is defined,
    else Welch's on the pooled samples (also over the sign test of a change alike on every item, where Welch's is
    defined: the two samples' spread is then the evidence). Returns ({`delta`, the deciding test's `TEST_KEYS`,
    `seed_level`}, Welch's t, df, p and interval)."""
    arm_side, baseline_side = _seeds_with_items(
        *([(run, sample(run, metric)) for run in runs] for runs in (arm_runs, baseline_runs)), metric)
    arm_runs, baseline_runs = [run for run, _ in arm_side], [run for run, _ in baseline_side]
    arm, baseline = (pool([s for _, s in side]) for side in (arm_side, baseline_side))
    keyed_arm, keyed_baseline = keyed(arm_runs, metric), keyed(baseline_runs, metric)
    same = paired(keyed_arm, keyed_baseline) if keyed_arm is not None and keyed_baseline is not None else None
    paper = welch_from_stats(arm.mean, arm.var, arm.n, baseline.mean, baseline.var, baseline.n, bounds=SHARE_CHANGE)
    paired_decides = same is not None and same["p"] is not None and (same["test"] != "sign" or paper["p"] is None)
    test = same if paired_decides else {"test": "welch", **paper}
    seeds = seed_level(*({run.seed: s.mean for run, s in side} for side in (arm_side, baseline_side)))
    delta = None if arm.mean is None or baseline.mean is None else arm.mean - baseline.mean
    compared = {"seeds": sorted({run.seed for run in arm_runs}), "arm": arm.mean, "baseline": baseline.mean,
                "n": arm.n, "n_baseline": baseline.n}  # the levels Δ is the difference of (`shared_seeds`)
    return {"delta": delta, **{key: test[key] for key in TEST_KEYS}, "seed_level": seeds, "compared": compared}, paper


def seed_interval(means: Sequence[float]) -> list[float] | None:
    """t-interval of the mean over seed means (k − 1 df), cut to [0, 1] since every metric is a share (with
    3 seeds the t quantile is 4.3, so a rate near 1 would otherwise get an upper bound above 1); None below
    two seeds."""
    k = len(means)
    if k < 2:
        return None
    return share_interval(float(np.mean(means)), float(np.std(means, ddof=1)) / math.sqrt(k), k - 1)


def bootstrap_interval(samples: Sequence[Sample], resamples: int, rng: np.random.Generator) -> list[float] | None:
    """Percentile bootstrap of the pooled per-item mean, items resampled within each seed."""
    present = [s for s in samples if s.n]
    if not present or any(s.items is None for s in present):
        return None
    totals = np.zeros(resamples)
    for s in present:
        totals += s.items[rng.integers(0, s.n, size=(resamples, s.n))].sum(axis=1)
    means = totals / sum(s.n for s in present)
    low, high = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


def metric_summary(runs: Sequence[MethodRun], metric: Metric, options: StatsOptions) -> dict[str, Any]:
    """Per-seed values, the mean over seeds with its t-interval, the pooled mean with its bootstrap CI."""
    samples = [sample(run, metric) for run in runs]
    seed_means = [s.mean for s in samples if s.mean is not None]
    pooled = pool(samples)
    key = zlib.crc32(f"{runs[0].method}/{metric.name}".encode())  # same draws whatever else is in the study
    rng = np.random.default_rng([options.bootstrap_seed, key])
    seeds, bootstrap = seed_interval(seed_means), bootstrap_interval(samples, options.bootstrap_resamples, rng)
    if pooled.n and pooled.mean in (0.0, 1.0):  # every item alike: no resample or seed spread moves off it
        wilson = with_ci({"value": pooled.mean, "n": pooled.n}, "value")["ci95"]
        seeds, bootstrap = seeds and wilson, bootstrap and wilson
    return {
        "per_seed": [
            {"seed": run.seed, "value": s.mean, "n": s.n, "stderr": math.sqrt(s.var / s.n) if s.n else None}
            for run, s in zip(runs, samples, strict=True)
        ],
        "seeds": len(seed_means),
        "mean_over_seeds": _mean(seed_means),
        "ci95_seeds": seeds,
        "pooled": pooled.mean,
        "n": pooled.n,
        "ci95_bootstrap": bootstrap,
    }


def series(rows: Sequence[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """Steps and finite values of a LOG_SERIES entry in a training log (empty when the log lacks it)."""
    key = next((k for k in LOG_SERIES[name] if any(k in row for row in rows)), None)
    pairs = [(int(row.get("step", i)), finite(row.get(key))) for i, row in enumerate(rows)] if key else []
    kept = [(step, value) for step, value in pairs if value is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def training_summary(method: str, runs: Sequence[MethodRun], options: StatsOptions) -> dict[str, Any] | None:
    """Final (tail-mean) losses, KL and weights per seed and over seeds, with the ln 2 flags; None
    for methods without DPO training logs (base, soups, oracle, arms that do not train on the study's pairs)."""
    logged = [run for run in runs if run.log_rows]
    if not logged or (method in ARMS and not ARMS[method].needs_pairs):
        return None
    per_seed = []
    for run in logged:
        tail = run.log_rows[-options.loss_tail :]
        per_seed.append(
            {"seed": run.seed, "steps": len(run.log_rows)} | {name: _mean(series(tail, name)[1]) for name in LOG_SERIES}
        )
    out: dict[str, Any] = {"trained": list(trained_tasks(method)), "per_seed": per_seed}
    for name in LOG_SERIES:
        out[name] = _mean([row[name] for row in per_seed if row[name] is not None])
    for task in TASKS:
        loss = out[f"{task}_loss"]
        out[f"{task}_ln2_gap"] = None if loss is None else loss - LN2
        trained = task in out["trained"] and loss is not None
        out[f"{task}_no_signal"] = abs(loss - LN2) <= options.ln2_tolerance if trained else None
        logp, ref = out[f"{task}_chosen_logp"], out[f"{task}_chosen_ref_logp"]
        shift = None if logp is None or ref is None else logp - ref
        out[f"{task}_chosen_shift"] = shift
        out[f"{task}_overoptimised"] = (loss < OVEROPTIMISED_LOSS and shift < 0) if trained and shift is not None else None
    return out


def _dig(tree: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return finite(tree)


def diagnostics_summary(runs: Sequence[MethodRun]) -> dict[str, Any] | None:
    """Inter-task cosine, ρ and intra-task cosines per seed and averaged over seeds; None without diagnostics."""
    diagnosed = [run for run in runs if run.diagnostics is not None]
    if not diagnosed:
        return None
    per_seed = [
        {"seed": run.seed, "batches": run.diagnostics.get("n")}
        | {name: _dig(run.diagnostics, path) for name, path in DIAGNOSTIC_FIELDS.items()}
        for run in diagnosed
    ]
    means = {name: _mean([row[name] for row in per_seed if row[name] is not None]) for name in DIAGNOSTIC_FIELDS}
    return {"per_seed": per_seed, **means}


def tests_performed(rows: Iterable[dict[str, Any]]) -> int:
    """How many of these rows hold a test (a p): a Bonferroni family's size."""
    return sum(row["p"] is not None for row in rows)


def alpha_over(alpha: float, tests: int) -> float:
    """Bonferroni's threshold over `tests` tests (α itself where there is none)."""
    return alpha / tests if tests else alpha


def corrected(p: float | None, tests: int, alpha: float) -> tuple[float | None, bool]:
    """(p_bonferroni, significant) of one test in a family of `tests`: (min(1, p · tests), p < α / tests); (None,
    False) without a test."""
    return (None, False) if p is None else (min(1.0, p * tests), p < alpha / tests)


def compute_stats(study: Study, options: StatsOptions = StatsOptions(),
                  metrics_tested: Sequence[Metric] = METRICS, baseline: str = BASE) -> dict[str, Any]:
    """Everything the report shows, as one JSON-serialisable dict (see the module docstring); `metrics_tested`:
    the study's METRICS, or what `unigap compare` finds in its reports; `baseline`: the method the others are
    tested against (the study's base, or `unigap compare`'s first report, by the name its warnings give)."""
    methods = [baseline, *(m for m in study.methods() if m != baseline)]
    compared = methods[1:]
    metrics: dict[str, dict[str, Any]] = {baseline: {}}
    for metric in metrics_tested:
        metrics[baseline][metric.name] = metric_summary(study.of(baseline), metric, options)
    for method in compared:
        metrics[method] = {}
        arm_runs, base_runs = shared_seeds(study.of(method), study.of(baseline))
        for metric in metrics_tested:
            test, paper = decide(arm_runs, base_runs, metric)
            metrics[method][metric.name] = metric_summary(study.of(method), metric, options) | test | {"welch": paper}
    families = {m: ARMS[m].family if m in ARMS else OTHER_FAMILY for m in compared}
    performed = {m: tests_performed(metrics[m].values()) for m in compared}  # no items: no test
    family = sum(performed.values())
    family_tests = {f: sum(performed[m] for m in compared if families[m] == f) for f in dict.fromkeys(families.values())}
    for method in compared:
        own = family_tests[families[method]]
        for row in metrics[method].values():
            row["p_bonferroni"], row["significant"] = corrected(row["p"], family, options.alpha)
            row["p_bonferroni_family"], row["significant_in_family"] = corrected(row["p"], own, options.alpha)
    return {
        "options": asdict(options) | {"confidence": CONFIDENCE},
        "config": study.config,
        "base": baseline,
        "methods": methods,
        "arms": [{"name": m, "family": ARMS[m].family, "kind": ARMS[m].kind} if m in ARMS else {"name": m}
                 for m in compared],
        "seeds": sorted({run.seed for run in study.runs}),
        "metrics": [asdict(metric) for metric in metrics_tested],
        "bonferroni": {"alpha": options.alpha, "tests": family, "alpha_corrected": alpha_over(options.alpha, family),
                       "families": {f: {"tests": n, "alpha_corrected": alpha_over(options.alpha, n)}
                                    for f, n in family_tests.items()}},
        "results": metrics,
        "training": {m: s for m in methods if (s := training_summary(m, study.of(m), options)) is not None},
        "diagnostics": {m: s for m in methods if (s := diagnostics_summary(study.of(m))) is not None},
    }


CSV_COLUMNS = (
    "method", "metric", "seeds", "per_seed", "mean_over_seeds", "ci95_seeds_low", "ci95_seeds_high",
    "n", "pooled", "ci95_bootstrap_low", "ci95_bootstrap_high", "delta", "delta_ci95_low", "delta_ci95_high",
    "test", "t", "df", "p", "p_bonferroni", "alpha_corrected", "significant", "p_welch", "seed_deltas", "p_seeds",
)  # fmt: skip


def _by_seed(rows: list[dict[str, Any]], key: str) -> str:
    """`seed:value;…`, a missing value left empty like every other empty CSV cell (not `None`)."""
    return ";".join(f"{row['seed']}:{'' if row[key] is None else row[key]}" for row in rows)


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method × metric (the base included, without test columns); intervals split in two."""
    rows = []
    for method in results["methods"]:
        for metric, summary in results["results"][method].items():
            row: dict[str, Any] = {"method": method, "metric": metric}
            row["per_seed"] = _by_seed(summary["per_seed"], "value")
            for key in ("ci95_seeds", "ci95_bootstrap", "delta_ci95"):
                low, high = summary.get(key) or (None, None)
                row |= {f"{key}_low": low, f"{key}_high": high}
            for key in CSV_COLUMNS:
                row.setdefault(key, summary.get(key))
            if method != results["base"]:
                row["alpha_corrected"] = results["bonferroni"]["alpha_corrected"]
                row["p_welch"] = summary["welch"]["p"]
                row["seed_deltas"] = _by_seed(summary["seed_level"]["deltas"], "delta")
                row["p_seeds"] = summary["seed_level"]["p"]
            rows.append({key: "" if row[key] is None else row[key] for key in CSV_COLUMNS})
    return rows
