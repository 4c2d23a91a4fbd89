"""Models' `unigap eval` reports against a baseline's, with the study's statistics (`unigap compare`).

Why: a user who evaluated a model before and after their own training wants the study's tests (the paired test
where both sides hold the same items and sampling seeds, Welch otherwise, Bonferroni over models × metrics) without
running a study. The reports become a `Study` whose base is the first model, and `compute_stats` does the rest, over
the metrics the reports hold: the study's, plus generation accuracy by another independent judge (`eval --judge
clip:DIR|vlm:DIR`) where there is one. What only a study has (training logs, gradient diagnostics, arm families) is
left out of the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape  # names are the user's, not rich markup
from rich.table import Table

from unigap.errors import UnigapWarning, UserError
from unigap.report.cells import fmt, fmt_p, rich_significance, significance_verdict
from unigap.report.stats import compute_stats
from unigap.atomic import read_json
from unigap.study.results import METRICS, Metric, MethodRun, Study

JUDGED = Metric("judged_generation.accuracy", "judged-generation accuracy", "generation", "judge_accepted")
STUDY_ONLY = ("config", "training", "diagnostics", "arms")
FAMILY_KEYS = ("p_bonferroni_family", "significant_in_family")
STUDY_OPTIONS = ("loss_tail", "ln2_tolerance")  # settings of the training-log summary
GROUPS = {"generation": "category", "understanding": "kind"}  # what `--by-category` splits each record kind by


def _seed(path: Path, report: Any) -> int:
    """The report's seed, after checking it has per-item records (what every test reads)."""
    def refuse(why: str) -> UserError:
        return UserError(f"{path} is not a `unigap eval` report ({why})")

    if not isinstance(report, dict):
        raise refuse("not a JSON object")
    records = report.get("records")
    kinds = {m.records for m in METRICS}
    if not isinstance(records, dict) or not any(isinstance(records.get(kind), list) for kind in kinds):
        raise refuse("no per-item generation or understanding records")
    if any(records.get(kind) is not None and not isinstance(records.get(kind), list) for kind in kinds):
        raise refuse("its records are not JSON arrays")
    if not all(isinstance(r, dict) for kind in kinds for r in records.get(kind) or []):
        raise refuse("a record is not a JSON object")
    config = report.get("config")
    seed = config.get("seed") if isinstance(config, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise refuse("its config has no integer seed")
    return seed


def reports_study(reports: Sequence[tuple[str, Path]]) -> Study:
    """(name, file) pairs as a study: the first name is the baseline (the study's base); files sharing a name are
    that model's seeds (the seed each report's config records)."""
    files: dict[Path, str] = {}
    for name, path in reports:
        if path.resolve() in files:
            raise UserError(f"{path} is given twice" + ("" if files[path.resolve()] == name else
                                                       f" (as {files[path.resolve()]!r} and as {name!r})"))
        files[path.resolve()] = name
    if len({name for name, _ in reports}) < 2:
        raise UserError("give at least two models to compare: the baseline's report, then one or more others")
    runs, seen = [], {}
    for name, path in reports:
        if path.is_dir():
            raise UserError(f"{path} is a directory; give the report file `unigap eval --out` wrote")
        if not path.is_file():
            raise UserError(f"report {path} not found")
        report = read_json(path)
        seed = _seed(path, report)
        if (name, seed) in seen:
            raise UserError(f"{seen[name, seed]} and {path} are both {name!r} seed {seed}; name them apart with "
                            "NAME=FILE")
        seen[name, seed] = path
        runs.append(MethodRun(name, seed, report))
    return Study(runs)


def _tested(reports: Sequence[tuple[Path, dict[str, Any]]]) -> list[Metric]:
    """The metrics some report holds outcomes of (generation needs the verifier's verdicts; judged generation
    another judge's); every record of a tested metric must carry its outcome, None where undecided (a report made
    without `--judge` carries no judged outcome at all: that model is not tested on it)."""
    tested = []
    for metric in (*METRICS, JUDGED):
        rows = [(path, r) for path, report in reports for r in report["records"].get(metric.records) or []]
        if not any(r.get(metric.outcome) is not None for _, r in rows):
            continue
        if metric is JUDGED:
            judged = {path for path, r in rows if metric.outcome in r}
            rows = [(path, r) for path, r in rows if path in judged]
        lacking = next((path for path, r in rows if metric.outcome not in r), None)
        if lacking is not None:
            raise UserError(f"{lacking} is not a `unigap eval` report ({metric.record} lacks {metric.outcome!r})")
        wrong = next(((path, problem) for path, r in rows if (problem := metric.outcome_problem(r[metric.outcome]))),
                     None)
        if wrong is not None:  # (json reads NaN and Infinity as floats, 1e400 as an int: a Δ of NaN, or a traceback)
            raise UserError(f"{wrong[0]} is not a `unigap eval` report ({wrong[1]})")
        if metric is JUDGED and not _judged_alike([report for _, report in reports]):
            continue
        tested.append(metric)
    return tested


def _judged_alike(reports: Sequence[dict[str, Any]]) -> bool:
    """Whether every report with another judge's verdicts had a judge alike (`_alike`); warns otherwise."""
    judges = [_judge(report) for report in reports if _judged(report)]
    if all(_alike(judges[0], judge) for judge in judges[1:]):
        return True
    named = "; ".join(dict.fromkeys(f"{j.get('name') or 'an unnamed judge'} (threshold {j.get('threshold')}, version "
                                    f"{j.get('version', 1)})" for j in judges))
    warnings.warn(UnigapWarning(f"judged-generation accuracy left out: the reports' judges differ ({named})"),
                  stacklevel=2)
    return False


def _judged(report: dict[str, Any]) -> bool:
    """Whether the report holds another judge's verdicts (`eval --judge`)."""
    return any(r.get(JUDGED.outcome) is not None for r in report["records"].get(JUDGED.records) or [])


def _judge(report: dict[str, Any]) -> dict[str, Any]:
    judge = report["config"].get("judge")
    return judge if isinstance(judge, dict) else {"name": judge}


def _alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same kind of judge, the same model (its weights' fingerprint, or its directory where a report has none:
    a CLIP moved to another folder is alike), the same version, and thresholds equal up to float noise (a CLIP
    calibrated again on another device; one calibrated differently is not alike)."""
    def kind(judge: dict[str, Any]) -> str:
        return str(judge.get("name") or "").split(":")[0]

    def model(judge: dict[str, Any]) -> Any:
        return judge.get("weights") or judge.get("directory")

    low, high = a.get("threshold"), b.get("threshold")
    thresholds = low == high or (isinstance(low, (int, float)) and isinstance(high, (int, float))
                                 and math.isclose(low, high, rel_tol=1e-4))
    return kind(a) == kind(b) and model(a) == model(b) and a.get("version", 1) == b.get("version", 1) and thresholds


def _by_group(reports: Sequence[dict[str, Any]], metrics: Sequence[Metric]) -> list[Metric]:
    """Each accuracy metric again within each generation category / understanding question kind the reports hold."""
    out = []
    for metric in metrics:
        field = GROUPS.get(metric.records)
        if field is None or not metric.higher_is_better:  # accuracies only
            continue
        values = sorted({r[field] for report in reports for r in report["records"].get(metric.records) or []
                         if r.get(field) is not None and r.get(metric.outcome) is not None}, key=str)
        short = metric.label.rsplit(" ", 1)[0]
        out += [Metric(f"{metric.name}.{v}", f"{short}: {v} {metric.label.rsplit(' ', 1)[1]}", metric.records,
                       metric.outcome, (field, v)) for v in values]
    return out


def compare_reports(reports: Sequence[tuple[str, Path]], by_group: bool = False) -> dict[str, Any]:
    """`compute_stats` of the reports (see `reports_study`) over the metrics they hold (with `by_group`, also per
    generation category and question kind), models in the order given, the baseline under its own name, the judge
    of judged-generation accuracy where it is tested (None otherwise), and without what only a study has."""
    study = reports_study(reports)  # its runs in the order of `reports`
    read = [(path, run.eval_report) for (_, path), run in zip(reports, study.runs, strict=True)]
    _warn_other_data(read)
    tested = _tested(read)
    if not tested:  # (records with no outcome in them: a table of nothing, "Bonferroni over 0 tests")
        files = ", ".join(str(path) for _, path in reports)
        raise UserError(f"no metric can be compared: no report holds an outcome of one ({files})")
    if by_group:
        tested += _by_group([run.eval_report for run in study.runs], tested)
    baseline, order = reports[0][0], list(dict.fromkeys(name for name, _ in reports))
    results = compute_stats(study, metrics_tested=tested, baseline=baseline)
    results["results"] = {name: results["results"][name] for name in order}
    for name in order[1:]:
        for summary in results["results"][name].values():
            for key in FAMILY_KEYS:
                summary.pop(key)
    results["bonferroni"].pop("families")
    for key in STUDY_ONLY:
        results.pop(key)
    for key in STUDY_OPTIONS:
        results["options"].pop(key)
    seeds = {name: sorted({run.seed for run in study.runs if run.method == name})
             for name in order}
    judge = next(_judge(report) for _, report in read if _judged(report)) if JUDGED in tested else None
    return results | {"base": baseline, "methods": order, "model_seeds": seeds, "judge": judge,
                      "reports": [[name, str(path)] for name, path in reports]}


DATA_SETTINGS = ("split", "data_seed", "prompts", "questions")  # what a report's items were drawn from
SAMPLING_SETTINGS = ("batch_size",)  # what else its images' sampling seeds follow (a batch's seed is its index's)


def _warn_other_data(reports: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """A warning where a report's items come from other data than the baseline's (another split or partition, or
    users' files beside the held-out items): its Δ then compares different items, not one model against another. And
    where its images were sampled under other seeds (another --batch-size): the paired test then pairs prompts only."""
    first, config = reports[0][0], reports[0][1].get("config") or {}
    for path, report in reports[1:]:
        other = report.get("config") or {}
        for settings, what, meaning in ((DATA_SETTINGS, "evaluated on other data", "its Δ compares different items"),
                                        (SAMPLING_SETTINGS, "sampled under other seeds",
                                         "its images are paired by prompt, not by sampling seed")):
            differ = [f"{key} {config.get(key)!r} → {other.get(key)!r}" for key in settings
                      if config.get(key) != other.get(key)]
            if differ:
                warnings.warn(UnigapWarning(f"{path} was {what} than {first} ({'; '.join(differ)}): {meaning}"),
                              stacklevel=3)


def _interval(interval: Sequence[float] | None) -> str:
    return "" if not interval else f"[{fmt(interval[0], signed=True)}, {fmt(interval[1], signed=True)}]"


def comparison_table(results: dict[str, Any]) -> Table:
    """`compare_reports`' results for the terminal: per model and metric both levels, Δ with the deciding test's 95%
    CI and p (* = significant after Bonferroni over models × metrics: green a gain, red a harm), the test (paired
    where both sides hold the same items, else Welch), and Welch's p, uncorrected, for reading beside papers that use
    it."""
    b, baseline = results["bonferroni"], results["base"]
    by_model = results.get("model_seeds") or {name: results["seeds"] for name in results["methods"]}  # (older ones)
    if all(each == by_model[baseline] for each in by_model.values()):
        seeds = f"seeds {by_model[baseline]}"
    else:  # (the union would claim seeds some model was never evaluated at)
        seeds = "seeds " + ", ".join(f"{escape(name)} {each}" for name, each in by_model.items())
    name = escape(baseline)
    table = Table(title=f"against {name}, {seeds}: level {name} → model; Δ and p by the paired test where "
                        "both sides hold the same items (same --split, --n, --seed, --data-seed), else Welch; "
                        f"* significant after Bonferroni over {b['tests']} tests (p < {b['alpha_corrected']:.2g}); "
                        "Welch p uncorrected")
    for header in ("model", "metric", "n", "level", "Δ [95% CI]", "p", "test", "Welch p"):
        table.add_column(header, justify="left" if header in ("model", "metric") else "right", overflow="fold",
                         no_wrap=header in ("metric", "n", "p"))
    for method in results["methods"][1:]:
        for metric in results["metrics"]:
            m = results["results"][method][metric["name"]]
            if not m["n"]:
                continue
            test = f"{fmt(m['delta'], signed=True)} {_interval(m['delta_ci95'])}"
            c = m["compared"]  # the seeds both have: what Δ compares
            n = str(c["n"]) if c["n"] == c["n_baseline"] else f"{c['n_baseline']} → {c['n']}"  # (both where they differ)
            table.add_row(
                escape(method), escape(metric["label"].rsplit(" ", 1)[0]), n,
                f"{fmt(c['baseline'])} → {fmt(c['arm'])}",
                rich_significance(test, significance_verdict(m["significant"], m["delta"], metric["higher_is_better"])),
                fmt_p(m["p"]), m["test"],
                fmt_p(m["welch"]["p"]),
            )
        table.add_section()
    return table
