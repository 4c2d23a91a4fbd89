"""Cost of one diagnostic batch vs one DPO training step, side by side in one run.

Training step: `unigap.train.trainer.DPOTrainer` (naive joint strategy): one und + one gen pair, each
task's DPO loss and gradient, the combination, clipping and an AdamW step. Diagnostic batch:
`GradientCollector.add` on a second copy of the model: the same two task gradients on the shared LoRA
plus the per-tensor dot products. Both use a fresh r 64 / α 128 LoRA and the same pairs. The diagnostic
batch runs inside the trainer's step callback, so the two alternate and a noisy machine slows both
alike; the first step (warm-up) and the last (it writes the checkpoint) are not timed. Reported: median
seconds of each and their ratio (target ≤ 2.5×).

    python benchmarks/diagnose_cost.py                 # random tiny model, 12 steps
    python benchmarks/diagnose_cost.py --model DIR --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import check_device, machine, nonnegative_int, positive_int, run_main, write_result

import unigap.world
from unigap.diagnose import GradientCollector, dpo_loss_fn, shared_parameters
from unigap.diagnose.sweep import SHORT, length_probes, probe_pairs
from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.train.config import TrainConfig
from unigap.train.dpo import GenerationPair, UnderstandingPair, with_reference
from unigap.train.trainer import DPOTrainer

TARGET_RATIO = 2.5
N_PAIRS = 8


def _tiny_model(directory: Path) -> Path:
    return save_random_tiny(directory, unigap.world.vocabulary())


def _pairs(um: UnifiedModel, seed: int) -> tuple[list[UnderstandingPair], list[GenerationPair]]:
    """Short-answer ShapeWorld pairs and random-token image pairs, with reference log-probs."""
    und = probe_pairs(um, length_probes(N_PAIRS, seed))[SHORT]
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, um.codebook_size, size=(N_PAIRS, 2, um.num_image_tokens)).tolist()
    gen = [GenerationPair(p.question, tuple(c), tuple(r), 0.0, 0.0) for p, (c, r) in zip(und, tokens, strict=True)]
    return und, with_reference(um, gen)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=positive_int, default=12, help="training steps (two are not timed)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diagnose_cost.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the first and last steps are not timed)")

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.model) if args.model else _tiny_model(Path(scratch) / "tiny")
        trained, diagnosed = load_model(directory, args.device), load_model(directory, args.device)
        und, gen = _pairs(diagnosed, args.seed)
        params = shared_parameters(diagnosed, full_params=False, seed=args.seed)
        loss = dpo_loss_fn(TrainConfig().dpo)
        collector = GradientCollector(diagnosed, params, loss, loss)
        config = TrainConfig(strategy="joint", steps=args.steps, seed=args.seed, checkpoint_every=args.steps)
        trainer = DPOTrainer(trained, config, und, gen, Path(scratch) / "run")

        def sync() -> None:
            if trained.device.type == "cuda":
                torch.cuda.synchronize()

        train_s: list[float] = []
        diag_s: list[float] = []
        clock = {"start": time.perf_counter()}

        def on_step(step: int, _record: dict) -> None:
            sync()
            train_s.append(time.perf_counter() - clock["start"])
            start = time.perf_counter()
            i = step % N_PAIRS
            collector.add(und[i], gen[i], i, i)
            sync()
            diag_s.append(time.perf_counter() - start)
            clock["start"] = time.perf_counter()

        trainer.train(on_step=on_step)
    train_median = statistics.median(train_s[1:-1])
    diag_median = statistics.median(diag_s[1:-1])
    ratio = diag_median / train_median

    table = Table(title=f"Diagnostic batch vs DPO training step, median of {len(train_s) - 2}")
    for column in ("", "seconds", "ratio"):
        table.add_column(column, justify="right")
    table.add_row("DPO training step (und + gen fwd/bwd, clip, AdamW)", f"{train_median:.3f}", "1.00×")
    table.add_row("diagnostic batch (und + gen gradients, dot products)", f"{diag_median:.3f}", f"{ratio:.2f}×")
    Console().print(table)
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"diagnostic / training = {ratio:.2f}× ({verdict} the {TARGET_RATIO}× target)")
    payload = {
        "model": args.model or "random tiny (unigap.model.tiny_janus_config, ShapeWorld vocabulary)",
        **machine(diagnosed),
        "lora": {"rank": 64, "alpha": 128, "shared_tensors": len(params.names), "shared_numel": params.numel},
        "timed_steps": len(train_s) - 2,
        "train_step_s": train_median,
        "diagnostic_batch_s": diag_median,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "train_step_samples_s": train_s,
        "diagnostic_batch_samples_s": diag_s,
    }
    write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    run_main(options(), main)
