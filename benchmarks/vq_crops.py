"""VQ crop sampling: uniform grid-aligned crops against crops biased to objects (what `unigap pretrain` does).

Why: with uniform crops, v2's VQ reached 0.91 verifier acceptance in 5600 steps, short of issue 4's 0.95.
Small objects are what it loses, and a uniform 32×32 crop of a 64×64 ShapeWorld canvas is often empty
background. This measures, side by side with the same seed and budget, how much crops that contain an
object buy (`vq_empty_crop_weight`: empty crops are drawn with that weight against 1).

    python benchmarks/vq_crops.py [--steps 800] [--scenes 4000] [--n 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import machine, positive_int, run_main, write_result

from unigap.evaluate import vq_fidelity
from unigap.pretrain import FULL, vq
from unigap.pretrain.run import build_model
from unigap.world import render, sample_records

RESULT = Path(__file__).parent / "results" / "vq_crops.json"
WEIGHTS = {"uniform": 1.0, "object": 0.1}  # draw weight of a crop with no object pixel, against 1


def run(mode: str, renders: np.ndarray, steps: int, n: int) -> dict:
    """Train a fresh seed-0 VQ for `steps` with the given crops; verifier acceptance of its reconstructions."""
    um = build_model(FULL)
    started = time.perf_counter()
    vq.train_vq(um.model.model.vqmodel, renders, steps, FULL.vq_batch, FULL.vq_lr, FULL.seed, None, FULL.vq_crop,
                WEIGHTS[mode])
    seconds = time.perf_counter() - started
    return {"crops": mode, "empty_crop_weight": WEIGHTS[mode], "steps": steps, "train_seconds": seconds} | vq_fidelity(
        um, n=n, seed=0, data_seed=0, progress=False, split="val")  # (a recipe is chosen on val, never on test)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=800)
    parser.add_argument("--scenes", type=positive_int, default=4000)
    parser.add_argument("--n", type=positive_int, default=200)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    renders = np.stack([render(scene) for _, scene in sample_records(args.scenes, FULL.seed, "train")])
    rows = [run(mode, renders, args.steps, args.n) for mode in ("uniform", "object")]
    table = Table("crops", "steps", "train s", "verifier accepts reconstructions")
    for row in rows:
        table.add_row(row["crops"], str(row["steps"]), f"{row['train_seconds']:.0f}",
                      f"{row['accuracy']:.3f} ± {row['stderr']:.3f}")
    Console().print(table)
    write_result(RESULT, {"benchmark": "vq_crops", "scenes": args.scenes, "n": args.n, "runs": rows, **machine()})


if __name__ == "__main__":
    run_main(options(), main)
