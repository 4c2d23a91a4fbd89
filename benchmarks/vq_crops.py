"""VQ crop sampling: uniform grid-aligned crops (what `unigap pretrain` does) against crops biased to objects.

Why: v2's VQ reaches 0.91 verifier acceptance in 5600 steps, short of issue 4's 0.95, and the pretraining
budget has no room for more steps. Small objects are what it loses, and a uniform 32×32 crop of a 64×64
ShapeWorld canvas is often empty background. This measures, side by side with the same seed and budget, how
much crops that contain an object (weight 1, empty crops 0.1) buy. `object_crops` is the candidate to move
into `unigap.pretrain.vq` once a full pretraining run confirms it.

    python benchmarks/vq_crops.py [--steps 800] [--scenes 4000] [--n 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import machine, write_result

from unigap.evaluate import vq_fidelity
from unigap.pretrain import FULL, vq
from unigap.pretrain.run import build_model
from unigap.world import render, sample_records

RESULT = Path(__file__).parent / "results" / "vq_crops.json"
EMPTY_WEIGHT = 0.1  # sampling weight of a crop with no object pixel, against 1 for one with some


def object_crops(images: np.ndarray, size: int, cell: int, generator: torch.Generator) -> np.ndarray:
    """Like `vq.grid_crops`, but corners whose crop holds an object pixel are 1/EMPTY_WEIGHT times likelier."""
    height, width = images.shape[1:3]
    n_rows, n_cols = (height - size) // cell + 1, (width - size) // cell + 1
    foreground = np.abs(images.astype(np.int16) - images[:, :1, :1].astype(np.int16)).max(-1) > 12
    table = np.pad(foreground.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))  # summed-area table
    r, c = np.arange(n_rows)[:, None] * cell, np.arange(n_cols)[None] * cell
    counts = table[:, r + size, c + size] - table[:, r, c + size] - table[:, r + size, c] + table[:, r, c]
    weights = torch.from_numpy((counts > 0).reshape(len(images), -1).astype(np.float32) + EMPTY_WEIGHT)
    pick = torch.multinomial(weights, 1, generator=generator).squeeze(1).numpy()
    rows, cols = (pick // n_cols) * cell, (pick % n_cols) * cell
    return np.stack([image[a : a + size, b : b + size] for image, a, b in zip(images, rows, cols, strict=True)])


def run(mode: str, renders: np.ndarray, steps: int, n: int) -> dict:
    """Train a fresh seed-0 VQ for `steps` with the given crops; verifier acceptance of its reconstructions."""
    uniform = vq.grid_crops
    vq.grid_crops = object_crops if mode == "object" else uniform
    try:
        um = build_model(FULL)
        started = time.perf_counter()
        vq.train_vq(um.model.model.vqmodel, renders, steps, FULL.vq_batch, FULL.vq_lr, FULL.seed, None, FULL.vq_crop)
        seconds = time.perf_counter() - started
    finally:
        vq.grid_crops = uniform
    return {"crops": mode, "steps": steps, "train_seconds": seconds} | vq_fidelity(um, n=n, seed=0, data_seed=0, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    renders = np.stack([render(scene) for _, scene in sample_records(args.scenes, FULL.seed, "train")])
    rows = [run(mode, renders, args.steps, args.n) for mode in ("uniform", "object")]
    table = Table("crops", "steps", "train s", "verifier accepts reconstructions")
    for row in rows:
        table.add_row(row["crops"], str(row["steps"]), f"{row['train_seconds']:.0f}", f"{row['accuracy']:.3f} ± {row['stderr']:.3f}")
    Console().print(table)
    write_result(RESULT, {"benchmark": "vq_crops", "scenes": args.scenes, "n": args.n, "runs": rows, **machine()})


if __name__ == "__main__":
    main()
