"""The study's statistics and report: per-method tests against the base, figures, and one HTML file.

Reads evaluation reports, training logs and gradient diagnostics as plain JSON data, so it needs neither a
model nor torch. Entry point: `build_report(results_dir_or_runs, out_dir)`. Its names are imported on first use, so
the command line can read `reference` without loading the plotting.
"""

from unigap.registry import lazy_attributes

_TARGETS = {
    "BuiltReport": "unigap.report.build:BuiltReport",
    "build_report": "unigap.report.build:build_report",
    "summary_table": "unigap.report.build:summary_table",
    "write_csv": "unigap.report.build:write_csv",
    "compare_reports": "unigap.report.eval_reports:compare_reports",
    "comparison_table": "unigap.report.eval_reports:comparison_table",
    "StatsOptions": "unigap.report.stats:StatsOptions",
    "compute_stats": "unigap.report.stats:compute_stats",
    "csv_rows": "unigap.report.stats:csv_rows",
    "BASE": "unigap.study.results:BASE",
    "METRICS": "unigap.study.results:METRICS",
    "MethodRun": "unigap.study.results:MethodRun",
    "Study": "unigap.study.results:Study",
    "load_study": "unigap.study.results:load_study",
}
__getattr__ = lazy_attributes(__name__, _TARGETS)
__all__ = list(_TARGETS)
