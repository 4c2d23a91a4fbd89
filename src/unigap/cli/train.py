"""`unigap train`: multi-task DPO with one of the strategies (see `unigap.train.strategies`), or understanding SFT
with (`--objective unimrg`) or without (`--objective und-sft`) UniMRG's auxiliary representation generation.

torch/transformers are imported inside the command, so `unigap --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from unigap.cli.common import MODEL_OPTION
from unigap.progress import progress
from unigap.train.names import STRATEGIES


def _losses(record: dict[str, Any]) -> str:
    return "  ".join(f"{t} {record[f'{t}_dpo_loss']:.4f}" for t in ("und", "gen") if f"{t}_dpo_loss" in record)


def train(
    model: str = MODEL_OPTION,
    objective: str = typer.Option("dpo", "--objective", help="dpo (multi-task DPO on --und/--gen pairs) | unimrg "
                                  "(understanding SFT + generating each input image's reconstruction, segmentation "
                                  "and depth maps, on ShapeWorld train scenes) | und-sft (the same without the maps)."),
    strategy: str | None = typer.Option(None, "--strategy", help="DPO: " + " | ".join(STRATEGIES)),
    und: Path | None = typer.Option(
        None, "--und", help="Understanding pairs (.jsonl/.parquet from `prefs build`)."
    ),
    gen: Path | None = typer.Option(None, "--gen", help="Generation pairs (gen-real or gen-model)."),
    out: Path = typer.Option(..., "--out", help="Output directory: log, checkpoints, final adapter."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: dpo 1000, unimrg 300)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: dpo 1e-6, unimrg 1e-4)."),
    beta: float | None = typer.Option(None, "--beta", help="DPO beta (default 0.1)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed: LoRA init, data order, dropout (default 0)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file of TrainConfig (dpo) or UniMRGConfig "
                                       "(unimrg, und-sft) keys; flags win."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    report_to: str = typer.Option("none", "--report-to", help="Also log to: none | tensorboard | wandb (as TRL)."),
) -> None:
    """Train a LoRA; logs every step to OUT/log.jsonl and saves the PEFT adapter in OUT."""
    from unigap.errors import UserError
    from unigap.metrics_log import parse_report_to

    from unigap.unimrg.config import OBJECTIVES

    backends = parse_report_to(report_to)
    if objective in OBJECTIVES:
        given = [flag for flag, value in (("--strategy", strategy), ("--und", und), ("--gen", gen), ("--beta", beta))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: for --objective dpo only ({objective} trains on ShapeWorld scenes)")
        _train_unimrg(model, objective, out, steps, lr, seed, config, resume, backends)
        return
    if objective != "dpo":
        raise UserError(f"unknown --objective {objective!r}; expected one of dpo, {', '.join(OBJECTIVES)}")
    if strategy is None:
        raise UserError("--objective dpo needs --strategy (one of " + ", ".join(STRATEGIES) + ")")
    from unigap.model import load_model
    from unigap.prefs.rows import load_pairs
    from unigap.train.config import TrainConfig
    from unigap.train.trainer import DPOTrainer

    settings = TrainConfig.load(config, strategy=strategy, steps=steps, lr=lr, beta=beta, seed=seed)
    und_pairs = load_pairs(und, "und") if und is not None else []
    gen_pairs = load_pairs(gen, "gen") if gen is not None else []
    from unigap.manifest import manifest, write_manifest

    settings_record = {"model": model, "und": None if und is None else str(und), "gen": None if gen is None else str(gen),
                       **settings.to_dict()}
    with manifest("train", settings_record, seeds=[settings.seed]) as record:
        um = load_model(model)
        record["device"] = str(um.device)
        trainer = DPOTrainer(um, settings, und_pairs, gen_pairs, out, report_to=backends)
        with progress(settings.strategy, settings.steps) as update:
            result = trainer.train(resume, lambda step, row: update(step, _losses(row)))
    write_manifest(result.out_dir, record)
    typer.echo(f"trained {result.steps} steps ({settings.strategy}); adapter and log in {result.out_dir}")


def _train_unimrg(model: str, objective: str, out: Path, steps: int | None, lr: float | None, seed: int | None,
                  config: Path | None, resume: bool, backends: tuple[str, ...]) -> None:
    from unigap.manifest import manifest, write_manifest
    from unigap.model import load_model
    from unigap.unimrg import UniMRGConfig
    from unigap.unimrg.trainer import train_unimrg

    settings = UniMRGConfig.load(config, objective=objective, steps=steps, lr=lr, seed=seed)
    with manifest("train", {"model": model, **settings.to_dict()}, seeds=[settings.seed]) as record:
        um = load_model(model)
        record["device"] = str(um.device)
        result = train_unimrg(um, settings, out, resume, backends)
    write_manifest(result.out_dir, record)
    typer.echo(f"trained {result.steps} steps ({objective}); adapter and log in {result.out_dir}")
