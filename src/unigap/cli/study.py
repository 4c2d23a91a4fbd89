"""`unigap study`: the main command — the whole diagnostic study on one model, resumable, with a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from unigap.arms import ARMS, FAMILIES


def study_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    seeds: int | None = typer.Option(None, "--seeds", help="Training and evaluation seeds (default 3; quick 2)."),
    n: int | None = typer.Option(None, "--n", help="Evaluation items per model and seed (default 200; quick 24)."),
    out: Path | None = typer.Option(
        None, "--out", help="Study directory (default runs/study, or runs/study-quick); rerun to resume."
    ),
    quick: bool = typer.Option(False, "--quick", help="Every arm of every family at CI size: few pairs, steps and "
                               "items (minutes on a CPU; not for conclusions)."),
    steps: int | None = typer.Option(None, "--steps", help="DPO steps per run (default 300; quick 6)."),
    lr: float | None = typer.Option(None, "--lr", help="DPO learning rate (default 1e-4, tuned for tiny)."),
    methods: str | None = typer.Option(
        None, "--methods", help=f"Arms, comma-separated, by name or family ({', '.join(FAMILIES)}); default: the "
        f"default arms (P1; with --quick every arm). Arms: {', '.join(ARMS)}."
    ),
    strategy: list[str] = typer.Option([], "--strategy", help="Deprecated: use --methods.", hidden=True),
) -> None:
    """Evaluate the base model, build preference pairs, diagnose gradients, train every strategy and post-hoc
    method per seed, evaluate each, and write results.json/.csv, figures and report.html into OUT."""
    from unigap.report import summary_table
    from unigap.study import FULL, QUICK, run_study
    from unigap.arms import select

    if strategy:
        typer.echo("unigap: --strategy is deprecated; use --methods NAME,NAME,...", err=True)
        methods = ",".join([*([methods] if methods else []), *strategy])
    preset = QUICK if quick else FULL
    config = preset.scaled(
        model=model, seeds=seeds, n=n, steps=steps, lr=lr, methods=select(methods) if methods else None
    )
    from dataclasses import asdict

    from unigap.manifest import manifest, write_manifest

    out = out or Path("runs/study-quick" if quick else "runs/study")
    with manifest("study", asdict(config), seeds=list(range(config.seeds)), judge={"name": "verifier"}) as record:
        built = run_study(config, out)
    write_manifest(out, record)
    Console().print(summary_table(built.results))
    typer.echo(f"wrote {out / 'report.html'} (and results.json, results.csv, figures) in {out}")
