"""`unigap compare`: models' `unigap eval` reports against a baseline's, with the study's statistics."""

from __future__ import annotations

import glob
from pathlib import Path

import typer
from rich.console import Console

from unigap.errors import UserError

app = typer.Typer()


def _named(argument: str) -> list[tuple[str, Path]]:
    """`NAME=FILE`, or `FILE` named by its file name without `.json`; a FILE with glob characters (quoted, e.g.
    `sft='runs/study/sft/seed*/eval.json'`) is every file it matches: one model's seeds."""
    name, sep, file = argument.partition("=")
    if not sep:
        name, file = Path(argument).stem, argument
    if not name or not file:
        raise UserError(f"{argument!r}: expected NAME=FILE or FILE")
    if not glob.has_magic(file):
        return [(name, Path(file))]
    matches = sorted(glob.glob(file))
    if not matches:
        raise UserError(f"{file} matches no file")
    return [(name, Path(match)) for match in matches]


@app.command("compare")
def compare_command(
    reports: list[str] = typer.Argument(..., metavar="REPORT", help=(
        "`unigap eval` reports, each FILE or NAME=FILE: the first is the baseline; reports sharing a NAME are one "
        "model's seeds (NAME defaults to the file's name without .json; a quoted glob names several files)."
    )),
    out: Path | None = typer.Option(None, "--out", help="Also write the statistics as JSON (atomically)."),
) -> None:
    """Each model against the first: per metric both levels, Δ with Welch's 95% CI and p, Bonferroni over models ×
    metrics, and the paired test where both were evaluated on the same items and sampling seeds (same --split,
    --n, --seed)."""
    from unigap.evaluate import check_output_file, save_report
    from unigap.report import compute_stats, comparison_table, reports_study

    named = [pair for argument in reports for pair in _named(argument)]
    if out is not None:
        check_output_file(out)
    results = compute_stats(reports_study(named))
    Console().print(comparison_table(results, baseline=named[0][0]))
    if out is not None:
        save_report(results | {"baseline": named[0][0], "reports": [[n, str(p)] for n, p in named]}, out)
