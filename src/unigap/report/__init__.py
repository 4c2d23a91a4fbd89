"""The study's statistics and report: per-method tests against the base, figures, and one HTML file.

Reads evaluation reports, training logs and gradient diagnostics as plain JSON data, so it needs neither a
model nor torch. Entry point: `build_report(results_dir_or_runs, out_dir)`. Its names are imported on first use, so
the command line can read `reference` without loading the plotting.
"""

from unigap.registry import lazy_attributes

__getattr__, __all__ = lazy_attributes(__name__, {
    "unigap.report.build": ("BuiltReport", "build_report", "summary_table", "write_csv"),
    "unigap.report.eval_reports": ("compare_reports", "comparison_table"),
    "unigap.report.stats": ("StatsOptions", "compute_stats", "csv_rows"),
    "unigap.study.results": ("BASE", "METRICS", "MethodRun", "Study", "load_study"),
})
