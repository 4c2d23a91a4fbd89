"""`unigap pretrain`: train the embedded default model (a tiny Janus on ShapeWorld) from scratch."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from unigap.errors import UserError


def pretrain_command(
    out: Path = typer.Option(..., "--out", help="Output directory: a checkpoint that `--model DIR` loads."),
    seed: int = typer.Option(0, "--seed", help="Seed for the corpus, the initialisation and the data order, and "
                             "the train/val/test partition it trains within: evaluate a model pretrained with "
                             "--seed N by `unigap eval --data-seed N` (partition 0, every other command's, holds "
                             "prompts it trained on)."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized run (minutes, not a useful model)."),
    report_to: str = typer.Option("none", "--report-to", help="Also log to: none | tensorboard | wandb (as TRL)."),
    device: str | None = typer.Option(None, "--device", help="Where to train, in float32: cpu, cuda, cuda:1, ... "
                                      "(default: CUDA when torch sees it, else cpu). The same data and initial "
                                      "weights on any device; on a CPU the same seed and torch thread count give "
                                      "the same weights."),
) -> None:
    """Train the VQ tokenizer, the vision tower, then LLM + aligners + generation head; rerunning an interrupted run
    resumes it (a finished one is refused)."""
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    from unigap.metrics_log import parse_report_to
    from unigap.pretrain import FULL, QUICK, pretrain  # torch: imported only when the command runs

    backends = parse_report_to(report_to)

    from dataclasses import asdict

    from unigap.manifest import manifest, write_manifest
    from unigap.model.loading import EMBEDDED, default_device_and_dtype

    chosen, _ = default_device_and_dtype(device, "float32")  # a device torch cannot use: one line, before any work

    config = (QUICK if quick else FULL).scaled(seed=seed)
    started = time.perf_counter()
    with manifest("pretrain", asdict(config), seeds=[seed]) as record:
        record["device"] = str(chosen)
        directory = pretrain(out, config, report_to=backends, device=chosen)
    write_manifest(directory, record)
    shown = f"./{directory}" if str(directory) in EMBEDDED else str(directory)  # `--model tiny` is the shipped model
    partition = f" (held out: `unigap eval --data-seed {seed}`)" if seed else ""  # the partition it trained in
    Console().print(f"saved {directory} in {time.perf_counter() - started:.0f} s; load it with --model {shown}"
                    f"{partition}")
