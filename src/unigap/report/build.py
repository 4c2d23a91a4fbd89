"""`build_report`: a study's results → results.json, results.csv, PNG figures and report.html; and the
terminal summary. Each file is written atomically, so none is ever half-written; an interrupted build can leave
a new results.json beside an older report.html, which the next build (a study's rerun) replaces."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from unigap.evaluate.report import save_report, write_atomically
from unigap.report.claims import co_degradation, verdicts
from unigap.report.compare import comparisons, guard_stops, kind_levels, refine_curves, win_rates
from unigap.report.figures import Plot, write_figures
from unigap.report.cells import fmt, fmt_p, rich_significance, significance_verdict
from unigap.report.html import write_html
from unigap.report.stats import CSV_COLUMNS, StatsOptions, compute_stats, csv_rows
from unigap.study.results import METRICS, MethodRun, Study, as_study

RESULTS_JSON, RESULTS_CSV, REPORT_HTML = "results.json", "results.csv", "report.html"


@dataclass(frozen=True)
class BuiltReport:
    results: dict[str, Any]
    files: list[Path]


def write_csv(results: dict[str, Any], path: str | Path) -> Path:
    """`csv_rows(results)` with a header row."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(csv_rows(results))

    return write_atomically(path, write)


def build_report(
    source: Study | Sequence[MethodRun] | str | Path,
    out_dir: str | Path,
    options: StatsOptions = StatsOptions(),
    title: str = "unigap study",
) -> BuiltReport:
    """Statistics, figures and the HTML report of a study (a `Study`, runs, or a results directory)."""
    study = as_study(source)
    out_dir = Path(out_dir)
    results = compute_stats(study, options)
    results["comparisons"] = comparisons(study, options)
    results["understanding_by_kind"] = kind_levels(study)
    results["refine_rounds"] = refine_curves(study)
    results["win_rates"], results["guard_stops"] = win_rates(study), guard_stops(study)
    results["claims"] = verdicts(results)
    results["co_degradation"] = co_degradation(results)
    results["wall_seconds"], results["jobs_seconds"] = study.wall_seconds, study.jobs_seconds
    if study.answer_length is not None:  # the per-batch ratios stay in the probe's own file
        results["answer_length"] = study.answer_length | {
            "forms": {f: {k: v for k, v in row.items() if k != "ratios"} for f, row in study.answer_length["forms"].items()}}
    plots: list[Plot] = write_figures(study, results, out_dir)
    files = [
        save_report(results, out_dir / RESULTS_JSON),
        write_csv(results, out_dir / RESULTS_CSV),
        *(plot.path for plot in plots),
        write_html(results, plots, out_dir / REPORT_HTML, title),
    ]
    return BuiltReport(results, files)


def summary_table(results: dict[str, Any]) -> Table:
    """Δ vs base with p per metric (* = significant after Bonferroni: green a gain, red a harm) and the final
    generation loss."""
    b = results["bonferroni"]
    table = Table(title=f"unigap study (seeds {results['seeds']}; Bonferroni p < {b['alpha_corrected']:.2g})")
    table.add_column("method", overflow="fold")
    for metric in METRICS:
        table.add_column(f"Δ {metric.label} (p)", justify="right", overflow="fold")
    table.add_column("gen loss − ln 2", justify="right", overflow="fold")
    for method in results["methods"][1:]:
        cells = []
        for metric in METRICS:
            m = results["results"][method][metric.name]
            text = f"{fmt(m['delta'], signed=True)} ({fmt_p(m['p'])})"
            cells.append(rich_significance(text, significance_verdict(m["significant"], m["delta"],
                                                                      metric.higher_is_better)))
        training = results["training"].get(method, {})
        gap = fmt(training.get("gen_ln2_gap"), 4, signed=True)
        cells.append(f"[red]{gap} no signal[/red]" if training.get("gen_no_signal") else gap)
        table.add_row(escape(method), *cells)  # an arm's name is the user's text, not rich markup
    return table

