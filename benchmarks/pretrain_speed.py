"""Pretraining speed per stage on a device, and what the full recipe (`unigap pretrain`) would take there.

Why: the embedded model's open targets wait for a retrain, which takes about 112 min on the 2-core CPU; a lent GPU
gives minutes. Before spending them on a full run, this times a few steps of each stage at the full recipe's
batch sizes on small corpora (a step's cost does not depend on the corpus size) and projects the recipe: stage
steps × seconds per step, plus drawing the corpora and VQ-coding their pictures, scaled from the small ones.
Corpora are drawn on the CPU whatever the device.

    python benchmarks/pretrain_speed.py [--device cuda] [--steps 10] [--out benchmarks/results/pretrain_speed.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import check_device, machine, matmul_flops, positive_int, run_main, write_result

from unigap.model.loading import default_device_and_dtype
from unigap.pretrain import FULL
from unigap.pretrain.joint import PatchHead, joint_step, make_optimizer, trainable_parameters
from unigap.pretrain.labels import grid_side
from unigap.pretrain.run import build_corpora, build_model, tokenize_corpora
from unigap.pretrain.vision import train_vision
from unigap.pretrain.vq import train_vq

RESULT = Path(__file__).parent / "results" / "pretrain_speed.json"
SMALL = {"scenes": 200, "understanding_scenes": 200, "critique_scenes": 200, "edit_pairs": 200}  # corpus sizes
WARMUP = 2  # steps of each stage left out of its timing (allocator, kernel selection)


def per_step(run: Callable[[Callable[..., None]], None], steps: int) -> float:
    """Median seconds between consecutive step callbacks of `run(on_step)` after `WARMUP` steps (each callback
    reads a loss, which waits for the device)."""
    stamps: list[float] = []
    run(lambda *_: stamps.append(time.perf_counter()))
    assert len(stamps) == steps + WARMUP, f"{len(stamps)} callbacks for {steps + WARMUP} steps"
    return float(np.median(np.diff(stamps[WARMUP - 1:])))


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when torch "
                        "sees it)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per stage")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {RESULT.name} on the CPU, "
                        "pretrain_speed_cuda.json on a GPU (the CPU's result, which the docs quote, kept)")
    return parser


def default_out(device: torch.device) -> Path:
    return RESULT if device.type == "cpu" else RESULT.with_name(f"{RESULT.stem}_{device.type}.json")


def main(argv: list[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    device, _ = default_device_and_dtype(args.device, "float32")
    config, n = FULL.scaled(**SMALL), args.steps + WARMUP
    um = build_model(config, device)
    started = time.perf_counter()
    corpora = build_corpora(config, grid_side(um.num_image_tokens), show=False)
    corpus_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tokenize_corpora(um, corpora)  # (with the untrained VQ: the same arithmetic)
    tokenize_seconds = time.perf_counter() - started

    vq = per_step(lambda on_step: train_vq(um.model.model.vqmodel, corpora.gen.renders, n, config.vq_batch,
                                           config.vq_lr, 0, on_step, config.vq_crop, config.vq_empty_crop_weight),
                  args.steps)
    vision = per_step(lambda on_step: train_vision(um.model.model.vision_model, corpora.und, n, config.vision_batch,
                                                   config.vision_lr, 0, config.reconstructed_fraction, on_step),
                      args.steps)

    def joint(on_step: Callable[..., None]) -> None:
        head = PatchHead(config.hidden_size).to(um.device)
        params = trainable_parameters(um, config) + list(head.parameters())
        optimizer, schedule = make_optimizer(params, config)
        rng = np.random.default_rng(0)
        um.model.train()
        for _ in range(n):
            on_step(joint_step(um, head, corpora, optimizer, schedule, params, rng, config))

    joint_seconds = per_step(joint, args.steps)

    full = FULL
    pictures = full.scenes + full.edit_pairs + full.understanding_scenes + full.critique_scenes + full.edit_pairs
    small_pictures = sum(SMALL.values()) + SMALL["edit_pairs"]  # (an edit codes its source and its result)
    rows = [
        ("draw the corpora (CPU)", None, None, corpus_seconds * pictures / small_pictures),
        ("VQ-code the corpora", None, None, tokenize_seconds * pictures / small_pictures),
        ("VQ tokenizer", vq, full.vq_steps, vq * full.vq_steps),
        ("vision tower", vision, full.vision_steps, vision * full.vision_steps),
        ("joint", joint_seconds, full.steps, joint_seconds * full.steps),
    ]
    table = Table("stage", "ms per step", "full recipe steps", "projected min", title=f"unigap pretrain on {device}")
    for name, step, steps, total in rows:
        table.add_row(name, "" if step is None else f"{1000 * step:.1f}", "" if steps is None else str(steps),
                      f"{total / 60:.1f}")
    projected = sum(total for *_, total in rows)
    table.add_row("total", "", "", f"{projected / 60:.1f}")
    Console().print(table)
    write_result(args.out or default_out(um.device), {
        "benchmark": "pretrain_speed", "timed_steps": args.steps, "small_corpora": SMALL,
        "stages": [{"stage": name, "seconds_per_step": step, "full_steps": steps, "projected_seconds": total}
                   for name, step, steps, total in rows],
        "projected_minutes": projected / 60, "matmul_gflops": matmul_flops(um.device, torch.float32) / 1e9,
        **machine(um),
    })


if __name__ == "__main__":
    torch.manual_seed(0)
    run_main(options(), main)
