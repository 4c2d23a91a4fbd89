"""The study's statistics and report: per-method tests against the base, figures, and one HTML file.

Reads evaluation reports, training logs and gradient diagnostics as plain JSON data, so it needs neither a
model nor torch. Entry point: `build_report(results_dir_or_runs, out_dir)`.
"""

from unigap.report.build import BuiltReport, build_report, summary_table, write_csv
from unigap.report.eval_reports import compare_reports, comparison_table
from unigap.report.stats import StatsOptions, compute_stats, csv_rows
from unigap.study.results import BASE, METRICS, MethodRun, Study, load_study

__all__ = [
    "BASE",
    "METRICS",
    "BuiltReport",
    "MethodRun",
    "StatsOptions",
    "Study",
    "build_report",
    "compare_reports",
    "comparison_table",
    "compute_stats",
    "csv_rows",
    "load_study",
    "summary_table",
    "write_csv",
]
