"""Models' `unigap eval` reports against a baseline's, with the study's statistics (`unigap compare`).

Why: a user who evaluated a model before and after their own training wants the study's tests (Welch against
the baseline, the paired test where both sides hold the same items and sampling seeds, Bonferroni over models ×
metrics) without running a study. The reports become a `Study` whose base is the first model, and
`compute_stats` does the rest; what only a study has (training logs, gradient diagnostics, arm families) is left
out of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unigap.errors import UserError
from unigap.report.runs import BASE, MethodRun, Study, read_json
from unigap.report.stats import METRICS, compute_stats

STUDY_ONLY = ("config", "training", "diagnostics", "arms")
FAMILY_KEYS = ("p_bonferroni_family", "significant_in_family")
STUDY_OPTIONS = ("loss_tail", "ln2_tolerance")  # settings of the training-log summary


def _check_report(path: Path, report: Any) -> int:
    """The report's seed, after checking it has what the tests read: per-item records with every metric's outcome."""
    def refuse(why: str) -> UserError:
        return UserError(f"{path} is not a `unigap eval` report ({why})")

    if not isinstance(report, dict):
        raise refuse("not a JSON object")
    records = report.get("records")
    if not isinstance(records, dict) or not any(isinstance(records.get(m.records), list) for m in METRICS):
        raise refuse("no per-item generation or understanding records")
    for metric in METRICS:
        rows = records.get(metric.records, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) and metric.outcome in r for r in rows):
            raise refuse(f"a {metric.records} record lacks {metric.outcome!r}")
    config = report.get("config", {})
    seed = config.get("seed", 0) if isinstance(config, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise refuse("its config has no integer seed")
    return seed


def reports_study(reports: Sequence[tuple[str, Path]]) -> Study:
    """(name, file) pairs as a study: the first name is the baseline (the study's base); files sharing a name are
    that model's seeds (the seed each report's config records)."""
    files: dict[Path, str] = {}
    for name, path in reports:
        if path.resolve() in files:
            raise UserError(f"{path} is given twice (as {files[path.resolve()]!r} and as {name!r})")
        files[path.resolve()] = name
    if len({name for name, _ in reports}) < 2:
        raise UserError("give at least two models to compare: the baseline's report, then one or more others")
    baseline = reports[0][0]
    if baseline != BASE and any(name == BASE for name, _ in reports):
        raise UserError(f"the name {BASE!r} is kept for the baseline, the first report; name the others differently")
    runs, seen = [], {}
    for name, path in reports:
        if path.is_dir():
            raise UserError(f"{path} is a directory; give the report file `unigap eval --out` wrote")
        if not path.is_file():
            raise UserError(f"report {path} not found")
        report = read_json(path)
        seed = _check_report(path, report)
        if (name, seed) in seen:
            raise UserError(f"{seen[name, seed]} and {path} are both {name!r} seed {seed}; name them apart with "
                            "NAME=FILE")
        seen[name, seed] = path
        runs.append(MethodRun(BASE if name == baseline else name, seed, report))
    return Study(runs)


def compare_reports(reports: Sequence[tuple[str, Path]]) -> dict[str, Any]:
    """`compute_stats` of the reports (see `reports_study`), models in the order given, the baseline under its own
    name, and without what only a study has."""
    results = compute_stats(reports_study(reports))
    baseline = reports[0][0]
    order = list(dict.fromkeys(name for name, _ in reports))
    results["results"] = {name: results["results"][BASE if name == baseline else name] for name in order}
    for metrics in list(results["results"].values())[1:]:
        for summary in metrics.values():
            for key in FAMILY_KEYS:
                summary.pop(key)
    results["bonferroni"].pop("families")
    for key in STUDY_ONLY:
        results.pop(key)
    for key in STUDY_OPTIONS:
        results["options"].pop(key)
    return results | {"base": baseline, "methods": order, "reports": [[name, str(path)] for name, path in reports]}
