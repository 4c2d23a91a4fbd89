"""What the study hands to the report: one `MethodRun` per (method, seed), read from plain dicts or a directory, and
the headline metrics' per-item outcomes in them (`METRICS`, `sample`, `keyed`, `paired`).

Why plain dicts: the evaluation report (`unigap.evaluate.evaluate`), the training log (`log.jsonl` rows) and
`diagnostics.json` are already JSON; the report reads them as they are, so it never needs a model or torch.

Directory layout read by `load_study` (what `unigap study` writes)::

    RESULTS/study.json                       optional: the study's configuration, shown in the report
    RESULTS/<method>/seed<k>/eval.json       required: the evaluation report of that model
    RESULTS/<method>/seed<k>/log.jsonl       optional: training log (trained strategies only)
    RESULTS/<method>/seed<k>/diagnostics.json  optional: gradient diagnostics (usually base only)
    RESULTS/answer-length/answer_length.json   optional: the answer-length probe (`unigap.study.answer_length`)
    RESULTS/jobs.jsonl                       optional: seconds per study job ("<method>, seed <k>"), summed per method
                                             (an attempt stopped by ^C, an error or, under the CLI, SIGTERM
                                             counts too; one killed otherwise writes no row: its time is lost)

The base model is the method named `base`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unigap.atomic import read_json
from unigap.errors import UserError
from unigap.metrics_log import read_log
from unigap.evaluate.stats import finite, paired_difference
from unigap.arms import arm_order

BASE = "base"
EVAL_FILE, LOG_FILE, DIAGNOSTICS_FILE, STUDY_FILE = "eval.json", "log.jsonl", "diagnostics.json", "study.json"
ANSWER_LENGTH_FILE, JOBS_FILE = "answer-length/answer_length.json", "jobs.jsonl"
_SEED_DIR = re.compile(r"seed(\d+)")


@dataclass(frozen=True)
class MethodRun:
    """One model of the study: its evaluation report, training log rows and gradient diagnostics."""

    method: str
    seed: int
    eval_report: dict[str, Any]
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, Any] | None = None


@dataclass(frozen=True)
class Study:
    """All runs plus the study configuration (free-form, shown in the report's methods section)."""

    runs: list[MethodRun]
    config: dict[str, Any] = field(default_factory=dict)
    answer_length: dict[str, Any] | None = None  # the answer-length probe, when the study ran it
    wall_seconds: dict[str, float] = field(default_factory=dict)  # per method, over its seeds' jobs (and attempts)
    jobs_seconds: float | None = None  # every job of the study (pairs, diagnostics and probes included)

    def methods(self) -> list[str]:
        """Methods present, in report order: the base, then the arms in registry order (read now: a user's arm
        registers after this module is imported), anything else after."""
        present = {run.method for run in self.runs}
        known = [m for m in (BASE, *arm_order()) if m in present]
        return known + sorted(present - set(known))

    def of(self, method: str) -> list[MethodRun]:
        """The runs of `method`, by seed."""
        return sorted((run for run in self.runs if run.method == method), key=lambda run: run.seed)


def as_study(source: Study | Sequence[MethodRun] | str | Path) -> Study:
    """A `Study` from a study, a list of runs, or a results directory; fails clearly without a base."""
    if isinstance(source, (str, Path)):
        study = load_study(source)
    elif isinstance(source, Study):
        study = source
    else:
        study = Study(list(source))
    if not any(run.method == BASE for run in study.runs):
        raise UserError(f"the study has no {BASE!r} runs to compare the methods against")
    seen = [(run.method, run.seed) for run in study.runs]
    if len(seen) != len(set(seen)):
        raise UserError("the study holds the same (method, seed) more than once")
    return study


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return read_log(path)  # (less a last row a kill cut off; a damaged row: a UserError naming its line)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def load_study(directory: str | Path) -> Study:
    """Every RESULTS/<method>/seed<k>/ holding an eval.json (see the module docstring for the layout)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"results directory {directory} does not exist")
    runs = []
    for eval_path in sorted(directory.glob(f"*/seed*/{EVAL_FILE}")):
        match = _SEED_DIR.fullmatch(eval_path.parent.name)
        if match is None:
            continue
        run_dir = eval_path.parent
        log, diagnostics = run_dir / LOG_FILE, run_dir / DIAGNOSTICS_FILE
        runs.append(
            MethodRun(
                method=run_dir.parent.name,
                seed=int(match.group(1)),
                eval_report=read_json(eval_path),
                log_rows=_read_jsonl(log) if log.is_file() else [],
                diagnostics=read_json(diagnostics) if diagnostics.is_file() else None,
            )
        )
    if not runs:
        raise UserError(f"no {directory}/<method>/seed<k>/{EVAL_FILE} found")
    config_path, probe, jobs = directory / STUDY_FILE, directory / ANSWER_LENGTH_FILE, directory / JOBS_FILE
    wall: dict[str, float] = {}
    finished = _read_jsonl(jobs) if jobs.is_file() else []
    for job in finished:
        method, seed = job["job"].rpartition(", seed ")[::2]
        if method and seed.isdigit():
            wall[method] = wall.get(method, 0.0) + job["seconds"]
    return Study(runs, read_json(config_path) if config_path.is_file() else {},
                 read_json(probe) if probe.is_file() else None, wall,
                 sum(job["seconds"] for job in finished) if finished else None)


# -- the headline metrics' per-item outcomes in a run's evaluation report --------------------------------------


@dataclass(frozen=True)
class Metric:
    """A metric: its name in the evaluation report and the per-item outcome behind it; `where` (field, value)
    keeps the items of one group (understanding questions of one kind), read from the report's `by_<field>`
    summary when it has no records."""

    name: str
    label: str
    records: str
    outcome: str
    where: tuple[str, str] | None = None
    higher_is_better: bool = True

    @property
    def record(self) -> str:
        """'a generation record', 'an understanding record': how messages name one of its records."""
        return f"{'an' if self.records[0] in 'aeiou' else 'a'} {self.records} record"

    def outcome_problem(self, value: Any) -> str | None:
        """What is wrong with a record's outcome, None when an accuracy can average it: a verdict (true/false, 0/1)
        or a graded score in [0, 1], or null (undecided). JSON reads a 5, "yes" or NaN as well: an accuracy of 1.25,
        or a traceback."""
        number = finite(value) if isinstance(value, (int, float)) else None
        if value is None or number is not None and 0 <= number <= 1:
            return None
        return f"{self.record}'s {self.outcome!r} is {value!r}, not true, false or a score in [0, 1]"


METRICS = (
    Metric("understanding.accuracy", "understanding accuracy", "understanding", "correct"),
    Metric("generation.accuracy", "generation accuracy", "generation", "verified"),
    Metric("nonunification.score", "non-unification score", "generation", "self_rejected", higher_is_better=False),
    Metric("weak_generation.rate", "weak-generation rate", "generation", "weak_generation", higher_is_better=False),
)


@dataclass(frozen=True)
class Sample:
    """One metric's outcomes: n, mean, population variance (ddof 0) and the items when they were recorded."""

    n: int
    mean: float | None
    var: float
    items: np.ndarray | None


def sample(run: MethodRun, metric: Metric) -> Sample:
    """The metric's outcomes in a run's evaluation report: from per-item records (null or absent outcomes, e.g. the
    weak-generation outcome of self-accepted images, are outside the sample), else from its summary."""
    report = run.eval_report
    records = _records(run, metric)
    if records is not None:
        items = np.array([float(r[metric.outcome]) for r in records if r.get(metric.outcome) is not None])
        if not len(items):
            return Sample(0, None, 0.0, items)
        return Sample(len(items), float(items.mean()), float(items.var()), items)
    section, key = metric.name.split(".")[:2]
    summary = report.get(section)
    if summary is not None and metric.where is not None:
        summary = summary.get(f"by_{metric.where[0]}", {}).get(metric.where[1])
    if summary is None:
        raise UserError(
            f"the evaluation report of {run.method} seed {run.seed} has neither {section} records nor {metric.name}"
        )
    n, stderr = int(summary["n"]), summary["stderr"]
    return Sample(n, summary[key], stderr**2 * n if n else 0.0, None)


def _records(run: MethodRun, metric: Metric) -> list[dict[str, Any]] | None:
    """The run's records of the metric (those its `where` selects); None without records. A record whose outcome no
    accuracy can average is refused: the report was edited, or was never `unigap eval`'s."""
    records = (run.eval_report.get("records") or {}).get(metric.records)
    if records is None:
        return None
    records = [r for r in records if metric.where is None or r.get(metric.where[0]) == metric.where[1]]
    for r in records:
        if problem := metric.outcome_problem(r.get(metric.outcome)):
            raise UserError(f"the evaluation report of {run.method} seed {run.seed} is not a `unigap eval` report "
                            f"({problem})")
    return records


ITEM_KEYS = ("index", "question", "prompt")  # what identifies an evaluation item in its records


def keyed(runs: Sequence[MethodRun], metric: Metric) -> dict[tuple[Any, ...], float] | None:
    """Per-item outcomes keyed by (seed, index, question/prompt); None without records."""
    out: dict[tuple[Any, ...], float] = {}
    for run in runs:
        records = _records(run, metric)
        if records is None:
            return None
        for r in records:
            if r.get(metric.outcome) is not None:
                out[(run.seed, *(r.get(k) for k in ITEM_KEYS))] = float(r[metric.outcome])
    return out


def paired(arm: dict[tuple[Any, ...], float], baseline: dict[tuple[Any, ...], float]) -> dict[str, Any] | None:
    """The paired test of arm − baseline over the shared items (`paired_difference`), when both sides hold exactly
    the same items; None otherwise."""
    if set(arm) != set(baseline) or len(arm) < 2:
        return None
    keys = sorted(arm, key=repr)
    d = paired_difference([baseline[k] for k in keys], [arm[k] for k in keys])
    sign = d["test"] == "sign"  # (no degrees of freedom, no interval)
    return {"test": "sign" if sign else "paired", "t": d["t"], "df": None if sign else d["n"] - 1, "p": d["p"],
            "delta_ci95": d["ci95"] if d["p"] is not None else None}
