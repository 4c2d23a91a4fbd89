"""`unigap prefs`: build preference pairs for multi-task DPO (rules in `unigap.prefs.build`).

torch/transformers are imported inside the command, so `unigap --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from unigap.cli.common import MODEL_OPTION
from unigap.progress import progress
from unigap.prefs.kinds import KINDS, check_suffix

app = typer.Typer(help="Preference pairs for multi-task DPO.", no_args_is_help=True)


@app.command()
def build(
    model: str = MODEL_OPTION,
    kind: str = typer.Option(..., "--kind", help=" | ".join(KINDS)),
    n: int = typer.Option(..., "--n", help="Number of pairs to keep."),
    seed: int = typer.Option(0, "--seed", help="Seed: scenes, questions and samples all follow from it."),
    out: Path = typer.Option(..., "--out", help="Output file, .jsonl or .parquet."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (und answers; gen-real)."),
    margin: float = typer.Option(0.5, "--margin", help="Minimum score margin (und, gen-model)."),
    fallback_gt: bool = typer.Option(False, "--fallback-gt", help="und: ground truth as chosen when samples tie."),
    cfg_scale: float = typer.Option(5.0, "--cfg-scale", help="CFG scale for image sampling (1 = none)."),
    max_candidates: int | None = typer.Option(None, "--max-candidates", help="Candidates to try (default 4n)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Candidates per model call."),
    answer_form: str = typer.Option("any", "--answer-form", help="und: any (every question kind) | word | sentence "
                                    "(the same questions, answered in one word or in a full sentence)."),
) -> None:
    """Sample, score and filter pairs; write them with reference log-probs under the base model."""
    check_suffix(out)
    from unigap.model import load_model
    from unigap.prefs.build import BuildOptions, build_preferences, summary
    from unigap.prefs.rows import write_rows

    options = BuildOptions(
        kind, n, seed, model, temperature, margin, fallback_gt, cfg_scale, max_candidates, batch_size, answer_form
    )
    um = load_model(model)
    with progress(f"{kind} pairs", n) as update:
        rows = build_preferences(um, options, lambda kept, tried: update(kept, f"{tried} tried"))
    path = write_rows(out, rows)
    typer.echo(f"wrote {len(rows)} pairs to {path}: {summary(rows)}")
