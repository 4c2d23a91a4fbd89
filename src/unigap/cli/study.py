"""`unigap study`: the main command — the whole diagnostic study on one model, resumable, with a report."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from unigap.arms import ARMS, FAMILIES, select
from unigap.cli.common import print_table
from unigap.train.defaults import DPO_DEFAULTS as DPO
from unigap.train.defaults import TUNE_GRID, TUNE_RUN

OPT_IN = tuple(name for name, arm in ARMS.items() if arm.family == "p1" and not arm.default)  # by name or p1


def default_out(quick: bool) -> Path:
    """Where `unigap study` writes without --out (checked before it starts, as a typed --out is)."""
    return Path("runs/study-quick" if quick else "runs/study")


def study_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    seeds: int | None = typer.Option(None, "--seeds", help="Training and evaluation seeds (default 3; quick 2)."),
    n: int | None = typer.Option(None, "--n", help="Evaluation items per model and seed (default 200; quick 24)."),
    out: Path | None = typer.Option(
        None, "--out", help="Study directory (default runs/study, or runs/study-quick); rerun to resume."
    ),
    quick: bool = typer.Option(False, "--quick", help="Every arm of every family at CI size: few pairs, steps and "
                               "items (minutes on a CPU; not for conclusions)."),
    steps: int | None = typer.Option(None, "--steps", help=f"DPO steps per run (default {DPO.steps}; quick 6)."),
    lr: float | None = typer.Option(None, "--lr", help=f"DPO learning rate (default {DPO.lr:g}: "
                                      "`unigap tune`'s choice for the shipped model)."),
    beta: float | None = typer.Option(None, "--beta", help=f"DPO beta (default {DPO.beta:g})."),
    nll_weight: float | None = typer.Option(None, "--nll-weight", help="DPO: NLL term on the chosen (RPO; default "
                                            f"{DPO.nll_weight:g})."),
    gen_kind: str | None = typer.Option(None, "--gen-kind", help=f"Generation pairs: gen-real | gen-model (default "
                                        f"{DPO.gen_kind})."),
    methods: str | None = typer.Option(
        None, "--methods", help=f"Arms, comma-separated, by name or family ({', '.join(FAMILIES)}). Without it: "
        f"{', '.join(select(None))} (p1 less its opt-in arms {', '.join(OPT_IN)}; with --quick every arm). "
        f"Arms: {', '.join(ARMS)}."
    ),
    strategy: list[str] = typer.Option([], "--strategy", help="Deprecated: use --methods.", hidden=True),
) -> None:
    """Evaluate the base model, build preference pairs, diagnose gradients, train every strategy and post-hoc
    method per seed, evaluate each, and write results.json/.csv, figures and report.html into OUT."""
    from unigap.report import build_report, summary_table
    from unigap.study import FULL, QUICK, run_study
    from unigap.arms import select

    if strategy:
        typer.echo("unigap: --strategy is deprecated; use --methods NAME,NAME,...", err=True)
        methods = ",".join([*([methods] if methods else []), *strategy])
    preset = QUICK if quick else FULL
    config = preset.scaled(
        model=model, seeds=seeds, n=n, steps=steps, lr=lr, beta=beta, nll_weight=nll_weight, gen_kind=gen_kind,
        methods=None if methods is None else select(methods),
    )
    from dataclasses import asdict

    from unigap.manifest import manifest, write_manifest
    from unigap.model.loading import default_device_name

    out = out or default_out(quick)
    with manifest("study", asdict(config), seeds=list(range(config.seeds)), judge={"name": "verifier"}) as record:
        record["device"] = default_device_name()
        built = build_report(run_study(config, out), out, title=f"unigap study: {config.model}")
        record["config"]["methods"] = built.results["config"]["methods"]  # study.json's: every arm of the folder
    write_manifest(out, record)
    print_table(summary_table(built.results))
    typer.echo(f"wrote {out / 'report.html'} (and results.json, results.csv, figures) in {out}")


def _listed(values: tuple) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _numbers(text: str, flag: str, cast: Callable[[str], float] = float) -> tuple[float, ...]:
    from unigap.cli import INT64

    try:
        numbers = tuple(cast(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    # (1e400 as an int overflowed math.isfinite; a 30-digit one passed, to hang in the trainer)
    if not numbers or not all(abs(number) < INT64 and math.isfinite(number) for number in numbers):
        what = "whole numbers" if cast is int else "finite numbers"
        raise typer.BadParameter(f"expected comma-separated {what}, got {text!r}", param_hint=flag)
    return numbers


def tune_command(
    model: str = typer.Option("tiny", "--model", help='A checkpoint directory, or "tiny" (the shipped model).'),
    kinds: str = typer.Option(_listed(TUNE_GRID["kinds"]), "--kinds", help="Generation pair kinds to compare."),
    lrs: str = typer.Option(_listed(TUNE_GRID["lrs"]), "--lrs", help="Learning rates, comma-separated."),
    nll_weights: str = typer.Option(_listed(TUNE_GRID["nll_weights"]), "--nll-weights",
                                    help="RPO NLL weights on the chosen, comma-separated."),
    betas: str = typer.Option(_listed(TUNE_GRID["betas"]), "--betas", help="DPO betas, comma-separated."),
    cfg_scales: str = typer.Option(_listed(TUNE_GRID["cfg_scales"]), "--cfg-scales",
                                   help="CFG scales the generation log-probs are scored under, comma-separated (0: "
                                        "conditional only)."),
    pair_batches: str = typer.Option(_listed(TUNE_GRID["pair_batches"]), "--pairs-per-step",
                                     help="Pairs per optimiser step, comma-separated."),
    steps: int = typer.Option(TUNE_RUN["steps"], "--steps", help="DPO steps per run."),
    eval_every: int = typer.Option(TUNE_RUN["eval_every"], "--eval-every",
                                   help="Validation evaluation (checkpoint selection) every K steps."),
    n: int = typer.Option(TUNE_RUN["n"], "--n", help="Validation prompts per evaluation."),
    pairs: int = typer.Option(TUNE_RUN["gen_pairs"], "--pairs", help="Generation pairs per kind (train prompts)."),
    kl_budget: float | None = typer.Option(None, "--kl-budget", help="Checkpoints whose drift from the reference, "
                                           "mean |log π − log π_ref| on the pair images (nats per image; of each "
                                           "step's mean), exceeds this are not eligible."),
    seed: int = typer.Option(0, "--seed", help="Training seed, and the seed that draws the validation prompts and "
                                               "samples their images."),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Output directory; rerun the same command to resume."),
) -> None:
    """Choose the DPO defaults on the validation split: a grid of gen-only DPO runs (pair kind × lr × β × NLL
    weight × CFG scale of the loss × pairs per step), each evaluated every K steps against the base on the same
    validation prompts; prints the table and the chosen setting, and writes OUT/results.json. Rerun with more grid
    values in the same OUT to add runs: finished ones are reused."""
    from rich.table import Table

    from unigap.manifest import manifest, write_manifest
    from unigap.model.loading import default_device_name
    from unigap.study.tune import TABLE_HEADER, TuneConfig, table, tune

    config = TuneConfig(
        model=model, kinds=tuple(k.strip() for k in kinds.split(",")), lrs=_numbers(lrs, "--lrs"),
        nll_weights=_numbers(nll_weights, "--nll-weights"), betas=_numbers(betas, "--betas"),
        cfg_scales=_numbers(cfg_scales, "--cfg-scales"), pair_batches=_numbers(pair_batches, "--pairs-per-step", int),
        steps=steps,
        eval_every=eval_every, n=n, gen_pairs=pairs, kl_budget=kl_budget, seed=seed,
    )  # fmt: skip
    console = Console(stderr=True, log_path=False)  # a timed line per stage, without the source line it was logged at
    with manifest("tune", config.to_dict(), seeds=[seed], judge={"name": "verifier"}) as record:
        record["device"] = default_device_name()
        results = tune(config, out, progress=lambda what: console.log(f"tune: {what}"))
    write_manifest(out, record)
    rendered = Table(*TABLE_HEADER, title=f"gen-only DPO on the validation split (n = {config.n}, seed {seed})")
    for row in table(results):
        rendered.add_row(*row)
    print_table(rendered)
    chosen = results["chosen"]
    if chosen is None:
        typer.echo("no checkpoint is within the KL budget")
    else:
        if chosen["delta"] <= 0:
            typer.echo("no setting beats the base on the validation split; the best of them:")
        p = "–" if chosen["p"] is None else format(chosen["p"], ".2g")
        typer.echo(f"chosen: {chosen['gen_kind']} pairs, lr {chosen['lr']:g}, beta {chosen['beta']:g}, nll_weight "
                   f"{chosen['nll_weight']:g}, gen_cfg_scale {chosen['gen_cfg_scale']:g}, pairs per step "
                   f"{chosen['batch_size']}, {chosen['step']} steps: validation generation {chosen['accuracy']:.3f} "
                   f"({chosen['delta']:+.3f} vs base, paired p {p})")
    typer.echo(f"wrote {out / 'results.json'}")
