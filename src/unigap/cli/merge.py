"""`unigap merge`: rewarded soups of an und-only and a gen-only adapter, exact on ΔW."""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.train.names import SOUP_LAMBDAS


def merge(
    und: Path = typer.Option(..., "--und", help="Adapter directory of the und-only run (θ_U)."),
    gen: Path = typer.Option(..., "--gen", help="Adapter directory of the gen-only run (θ_G)."),
    out: Path = typer.Option(..., "--out", help="Output directory; one OUT/soup-λ adapter per λ."),
    lambdas: list[float] = typer.Option(list(SOUP_LAMBDAS), "--lambda", help="λ (weight of θ_U); repeatable."),
) -> None:
    """Write θ = λ·θ_U + (1−λ)·θ_G for each λ as a PEFT adapter, loadable like a trained one (--adapter)."""
    from unigap.train.merge import soups

    for path in soups(und, gen, out, tuple(lambdas)):
        typer.echo(str(path))
