"""`unigap compare`: models' `unigap eval` reports against a baseline's, with the study's statistics."""

from __future__ import annotations

import glob
from pathlib import Path

import typer

from unigap.cli.common import print_table
from unigap.errors import UserError

app = typer.Typer()


def _named(argument: str) -> tuple[list[tuple[str, Path]], bool]:
    """The (name, file) pairs of one argument, and whether the user named them: an existing FILE (named by its file
    name without .json), or NAME=FILE, where FILE may be a quoted glob (every file it matches: one model's seeds)."""
    if Path(argument).is_file():
        return [(Path(argument).stem, Path(argument))], False
    name, sep, file = argument.partition("=")
    if not sep:
        if glob.has_magic(argument):
            raise UserError(f"{argument}: a glob needs a name, NAME='{argument}' (its files are one model's seeds)")
        return [(Path(argument).stem, Path(argument))], False
    if not name or not file:
        raise UserError(f"{argument!r}: expected NAME=FILE or FILE")
    if not glob.has_magic(file) or Path(file).is_file():  # (a file named `after[1].json` is that file, no pattern)
        return [(name, Path(file))], True
    matches = sorted(glob.glob(file))
    if not matches:
        raise UserError(f"{file} matches no file")
    return [(name, Path(match)) for match in matches], True


def _parse(arguments: list[str]) -> list[tuple[str, Path]]:
    """Every argument's pairs; a name taken from a file name must be unique (the same file name in two folders is
    two models unless the user names them as one)."""
    parsed = [_named(argument) for argument in arguments]
    pairs = [pair for group, _ in parsed for pair in group]
    for group, named in parsed:
        name = group[0][0]
        same = list(dict.fromkeys(path.resolve() for n, path in pairs if n == name))
        if not named and len(same) > 1:
            raise UserError(f"{same[0]} and {same[1]} would both be {name!r} ({group[0][1]} is named by its file "
                            "name); give NAME=FILE (a shared NAME makes reports one model's seeds)")
    return pairs


@app.command("compare")
def compare_command(
    reports: list[str] = typer.Argument(..., metavar="REPORT", help=(
        "`unigap eval` reports, each FILE or NAME=FILE: the first is the baseline; reports sharing a NAME are one "
        "model's seeds (NAME defaults to the file's name without .json; NAME='GLOB' names several files)."
    )),
    out: Path | None = typer.Option(None, "--out", help="Also write the statistics as JSON (atomically)."),
    by_category: bool = typer.Option(False, "--by-category", help="Also each generation category and understanding "
                                     "question kind (each a test: Bonferroni counts them)."),
) -> None:
    """Each model against the first: per metric both levels, Δ with its 95% CI and p by the paired test where both
    were evaluated on the same items (same --split, --n, --seed, --data-seed; with the same --batch-size the same
    sampling seeds too, else a warning), else by Welch's, Bonferroni over models × metrics. Another judge's verdicts
    (eval --judge) are compared only between judges alike (the same kind, weights, threshold and version)."""
    from unigap.evaluate import check_output_file, save_report
    from unigap.report import compare_reports, comparison_table

    pairs = _parse(reports)
    if out is not None:
        check_output_file(out, ".json")
        if any(out.resolve() == path.resolve() for _, path in pairs):
            raise UserError(f"--out {out} is one of the reports it reads; give another file")
    from unigap.manifest import manifest

    with manifest("compare", {"reports": [[name, str(path)] for name, path in pairs],
                              "by_category": by_category}) as record:
        results = compare_reports(pairs, by_group=by_category)
    print_table(comparison_table(results))
    if out is not None:
        save_report(results | {"manifest": record}, out)
