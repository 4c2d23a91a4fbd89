"""`unigap train`: multi-task DPO with one of the strategies (see `unigap.train.strategies`), supervised fine-tuning
on your own understanding and generation data in one run (`--objective sft`), or understanding SFT with
(`--objective unimrg`) or without (`--objective und-sft`) UniMRG's auxiliary representation generation.

torch/transformers are imported inside the command, so `unigap --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from unigap.cli.common import (BF16_OPTION, CONFIG_SEED, GRADIENT_CHECKPOINTING_OPTION, MODEL_OPTION, claim_inputs,
                               inputs_claimed, warn_other_partition, weights_dtype)
from unigap.progress import progress
from unigap.train.defaults import DPO_DEFAULTS as DPO
from unigap.train.names import STRATEGIES, check_pair_tasks


DTYPES = ("float32", "bfloat16")


def _losses(record: dict[str, Any]) -> str:
    return "  ".join(f"{t} {record[f'{t}_dpo_loss']:.4f}" for t in ("und", "gen") if f"{t}_dpo_loss" in record)


def train(
    model: str = MODEL_OPTION,
    objective: str = typer.Option("dpo", "--objective", help="dpo (multi-task DPO on --und/--gen pairs) | sft "
                                  "(supervised fine-tuning on --und-data and/or --gen-data, both in one run) | unimrg "
                                  "(understanding SFT + generating each input image's reconstruction, segmentation "
                                  "and depth maps, on ShapeWorld train scenes) | und-sft (the same without the maps)."),
    strategy: str | None = typer.Option(None, "--strategy", help="DPO: " + " | ".join(STRATEGIES)),
    und: Path | None = typer.Option(
        None, "--und", help="Understanding pairs (.jsonl/.parquet from `prefs build`, or in TRL's columns). A file "
        "another model built is rescored by this one (a warning): DPO's reference is the model that trains."
    ),
    gen: Path | None = typer.Option(None, "--gen", help="Generation pairs (gen-real or gen-model)."),
    und_data: Path | None = typer.Option(None, "--und-data", help="sft: understanding data (JSONL/CSV/Parquet or a "
                                         "save_to_disk folder with image, question, answer)."),
    gen_data: Path | None = typer.Option(None, "--gen-data", help="sft: generation data (image, prompt), e.g. the "
                                         "samples.jsonl of `unigap world sample`."),
    out: Path = typer.Option(..., "--out", help="Output directory: log, checkpoints, final adapter."),
    steps: int | None = typer.Option(None, "--steps", help=f"Optimizer steps (default: dpo {DPO.steps}, "
                                       "sft/unimrg 300)."),
    lr: float | None = typer.Option(None, "--lr", help=f"Peak learning rate (default: dpo {DPO.lr:g}, "
                                      "sft 3e-4, unimrg 1e-4)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Pairs (dpo) or examples (sft, unimrg) per "
                                          "task per step (default: dpo 1, sft/unimrg 8); under `accelerate launch` "
                                          "the processes share them (dpo: at least one each; elsewhere a process "
                                          "without one idles)."),
    beta: float | None = typer.Option(None, "--beta", help=f"DPO beta (default {DPO.beta:g})."),
    nll_weight: float | None = typer.Option(None, "--nll-weight", help="DPO: weight of the NLL term on the chosen "
                                            f"sequence (RPO; default {DPO.nll_weight:g})."),
    seed: int | None = typer.Option(None, "--seed", help="Seed: LoRA init, data order, dropout (default 0)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file of TrainConfig (dpo), SFTConfig (sft) or "
                                       "UniMRGConfig (unimrg, und-sft) keys; flags win. unimrg and und-sft draw "
                                       "their data from n_scenes (default 2000) scenes there, whatever --steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last "
                                "checkpoint (a fresh start when there is none, so a preemptible job can always pass it)."),
    dtype: str | None = typer.Option(None, "--dtype", help="Weights' dtype: float32 | bfloat16 (default: bfloat16 "
                                     "on a GPU, float32 on a CPU); LoRA weights and the generation head's master "
                                     "weights (trained in full) stay float32."),
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING_OPTION,
    bf16: bool = BF16_OPTION,
    report_to: str = typer.Option("none", "--report-to", help="Also log to: none | tensorboard | wandb (as TRL)."),
) -> None:
    """Train a LoRA; logs every step to OUT/log.jsonl and saves the PEFT adapter in OUT."""
    from unigap.errors import UserError
    from unigap.metrics_log import parse_report_to

    from unigap.unimrg.config import OBJECTIVES

    backends = parse_report_to(report_to)
    if dtype not in (None, *DTYPES):
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if objective not in ("dpo", "sft", *OBJECTIVES):
        raise UserError(f"unknown --objective {objective!r}; expected one of dpo, sft, {', '.join(OBJECTIVES)}")
    dpo_flags = [flag for flag, value in (("--strategy", strategy), ("--und", und), ("--gen", gen), ("--beta", beta),
                                                     ("--nll-weight", nll_weight)) if value is not None]
    if objective != "dpo" and dpo_flags:
        raise UserError(f"{', '.join(dpo_flags)}: for --objective dpo only")
    sft_flags = [flag for flag, value in (("--und-data", und_data), ("--gen-data", gen_data)) if value is not None]
    if objective != "sft" and sft_flags:
        trains_on = "preference pairs: --und/--gen" if objective == "dpo" else "ShapeWorld scenes it renders itself"
        raise UserError(f"{', '.join(sft_flags)}: for --objective sft only ({objective} trains on {trains_on})")
    common = {"steps": steps, "lr": lr, "seed": seed, "batch_size": batch_size,
              "gradient_checkpointing": gradient_checkpointing or None, "bf16": bf16 or None}
    run = Run(model, dtype, out, config, resume, backends)
    if objective == "sft":
        _train_sft(run, und_data, gen_data, common)
        return
    if objective in OBJECTIVES:
        _train_unimrg(run, objective, common)
        return
    import tomllib

    from unigap.prefs.rows import check_pair_file, pairs_of, stored_images
    from unigap.train.config import TrainConfig
    from unigap.train.sft_data import images_digest
    from unigap.model.checkpoint import model_identity
    from unigap.train.loop import resumed_state
    from unigap.train.trainer import DPOTrainer

    settings = TrainConfig.load(config, strategy=strategy, beta=beta, nll_weight=nll_weight, **common)
    given = {} if config is None else tomllib.loads(config.read_text(encoding="utf-8-sig"))  # (read: load checked it)
    if strategy is None and "strategy" not in given:
        raise UserError("--objective dpo needs --strategy (one of " + ", ".join(STRATEGIES) + "), or strategy in "
                        "--config")
    run = run.under(settings.bf16)
    files = {task: path for task, path in (("und", und), ("gen", gen)) if path is not None}
    check_pair_tasks(settings.strategy, files)  # before the model loads
    rows = {task: check_pair_file(path, task) for task, path in files.items()}  # a bad row fails before the load
    images = images_digest([image for task, path in files.items() for image in stored_images(rows[task], path)])
    inputs = claim_inputs(out, "train", model, und=und, gen=gen, write=False,  # another run's OUT, too
                          contents={"images": images})
    from unigap.manifest import manifest
    from unigap import distributed

    settings_record = {"model": model, "und": None if und is None else str(und), "gen": None if gen is None else str(gen),
                       **settings.to_dict()}
    with manifest("train", settings_record, seeds=[settings.seed]) as record:
        um = run.load(record)
        # a mistaken --resume, or none, fails before the pairs' images are encoded and their references rescored
        resumed_state(out, settings, resume, mmap=True, identity=model_identity(um))
        und_pairs, gen_pairs = (pairs_of(rows[task], files[task], task, um) if task in files else []
                                for task in ("und", "gen"))
        claim_inputs(out, "train", model, fingerprints=inputs)  # recorded once every row is read (images, token ids)
        trainer = DPOTrainer(um, settings, und_pairs, gen_pairs, out, report_to=backends)
        with progress(settings.strategy, settings.steps, distributed.is_main()) as update:
            result = trainer.train(resume, lambda step, row: update(step, _losses(row)))
    run.finish(result, record, settings.strategy)


@dataclass(frozen=True)
class Run:
    """What every objective's run shares: the model to load (and its dtype), where, and how."""

    model: str
    dtype: str | None
    out: Path
    config: Path | None
    resume: bool
    backends: tuple[str, ...]

    def under(self, bf16: bool) -> Run:
        """The run with the weights' dtype that bf16 autocast needs (the flag or the TOML's `bf16`), checked before
        anything is written."""
        return replace(self, dtype=weights_dtype(self.dtype, bf16))

    def load(self, record: dict[str, Any]) -> Any:
        """The base model, its device and dtype noted in the run's manifest record."""
        from unigap.model import load_model

        um = load_model(self.model, dtype=self.dtype)
        record |= {"device": str(um.device), "dtype": str(um.dtype).removeprefix("torch.")}
        return um

    def finish(self, result: Any, record: dict[str, Any], what: str) -> None:
        """The manifest next to the adapter and one line, from the main process of a data-parallel run."""
        from unigap.manifest import write_manifest
        from unigap import distributed

        if distributed.is_main():
            write_manifest(result.out_dir, {**record, "processes": distributed.world_size()})
            typer.echo(f"trained {result.steps} steps ({what}); adapter and log in {result.out_dir}")


def _train_sft(run: Run, und_data: Path | None, gen_data: Path | None, common: dict[str, Any]) -> None:
    from unigap.manifest import manifest
    from unigap.train.sft_data import SFTConfig, images_digest, read_sft_data, train_sft

    paths = {"und_data": None if und_data is None else str(und_data),
             "gen_data": None if gen_data is None else str(gen_data)}
    settings = SFTConfig.load(run.config, **common, **paths)
    run = run.under(settings.bf16)
    data = read_sft_data(settings)  # a bad row fails before the model loads
    read = {name: getattr(settings, name) or None for name in paths}  # the files read: a --config file's too
    images = images_digest([item.stored for item in data.understanding] + [c.stored for c in data.captions])
    with inputs_claimed(run.out, "train", run.model, contents={"images": images}, **read), manifest(
            "train", {"model": run.model, "objective": "sft", **settings.to_dict()}, seeds=[settings.seed]) as record:
        result = train_sft(run.load(record), settings, run.out, run.resume, run.backends, data=data)
    sizes = f"{len(data.understanding)} understanding, {len(data.captions)} generation examples"
    run.finish(result, record, f"sft on {sizes}")


def _train_unimrg(run: Run, objective: str, common: dict[str, Any]) -> None:
    from unigap.manifest import manifest
    from unigap.unimrg import UniMRGConfig
    from unigap.unimrg.trainer import train_unimrg

    settings = UniMRGConfig.load(run.config, objective=objective, **common)
    warn_other_partition(run.model, settings.data_seed, CONFIG_SEED)
    run = run.under(settings.bf16)
    with inputs_claimed(run.out, "train", run.model), manifest(
            "train", {"model": run.model, **settings.to_dict()}, seeds=[settings.seed]) as record:
        result = train_unimrg(run.load(record), settings, run.out, run.resume, run.backends)
    run.finish(result, record, objective)
