"""Multi-task DPO step speed: reference log-probs stored in the pairs vs recomputed every step.

Both variants run the same joint step on the same LoRA model — one understanding and one generation
pair, each task's DPO loss (`task_dpo_loss`), backward, clip, AdamW — and differ only in where π_ref comes
from: the pair's stored numbers (what `unigap prefs build` writes), or a no-grad pass of the base model
(adapters disabled) for chosen and rejected before every step (`with_reference`). One warm-up run each,
then the median of `--repeats` timed runs of `--steps` steps, the variants taking turns. Also checks that
both give the same loss (the stored numbers are the base model's).

    python benchmarks/dpo_step.py                          # random tiny model (ShapeWorld vocabulary)
    python benchmarks/dpo_step.py --model DIR --device cuda --lora-rank 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import machine, write_result

import unigap.world
from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.model.images import vq_image_size
from unigap.train.dpo import DPOOptions, GenerationPair, Pair, UnderstandingPair, task_dpo_loss, with_reference


def _tiny_model(directory: Path) -> UnifiedModel:
    return load_model(save_random_tiny(directory, unigap.world.vocabulary()))


def _pairs(um: UnifiedModel, n: int) -> tuple[list[Pair], list[Pair]]:
    """n understanding pairs (describe questions: the longest answers) and n generation pairs, refs stored."""
    rng = np.random.default_rng(0)
    canvas = vq_image_size(um.model.model.vqmodel)
    und: list[Pair] = []
    gen: list[Pair] = []
    for spec, scene in unigap.world.sample_records(n, 0, "train", canvas=canvas):
        question = unigap.world.sample_question(scene, rng, kind="describe")
        und.append(
            UnderstandingPair(unigap.world.render(scene), question.text, question.answer, "no", 0.0, 0.0, 0, 0)
        )
        rejected = rng.integers(0, um.codebook_size, um.num_image_tokens).tolist()
        chosen = um.encode_images([unigap.world.render(scene)])[0].tolist()
        gen.append(GenerationPair(spec.text, tuple(chosen), tuple(rejected), 0.0, 0.0))
    return with_reference(um, und), with_reference(um, gen)


def _stepper(
    um: UnifiedModel, und: Sequence[Pair], gen: Sequence[Pair], recompute: bool
) -> Callable[[int], float]:
    """A function doing one joint DPO step on pair `i`; returns the summed loss."""
    params = um.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)

    def step(i: int) -> float:
        batches = [[pairs[i % len(pairs)]] for pairs in (und, gen)]
        if recompute:
            batches = [with_reference(um, batch) for batch in batches]
        total = sum(task_dpo_loss(um, batch, DPOOptions()).loss for batch in batches)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    return step


def _paired_medians(
    steppers: Sequence[Callable[[int], float]], steps: int, repeats: int, device: torch.device
) -> list[float]:
    """Median seconds per step of each stepper, timed in alternation so a noisy machine slows both alike."""

    def timed(step: Callable[[int], float]) -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    for step in steppers:  # warm-up
        timed(step)
    seconds: list[list[float]] = [[] for _ in steppers]
    for _ in range(repeats):
        for step, samples in zip(steppers, seconds, strict=True):
            samples.append(timed(step))
    return [statistics.median(samples) for samples in seconds]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dpo_step.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        um = load_model(args.model, args.device, args.dtype) if args.model else _tiny_model(Path(scratch))
    und, gen = _pairs(um, 4)
    um.add_lora(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0)  # dropout off: equal losses below
    um.model.train()
    losses = [task_dpo_loss(um, [p], DPOOptions()).metrics["dpo_loss"] for p in (und[0], gen[0])]
    recomputed = [
        task_dpo_loss(um, with_reference(um, [p]), DPOOptions()).metrics["dpo_loss"] for p in (und[0], gen[0])
    ]
    stored_s, recompute_s = _paired_medians(
        [_stepper(um, und, gen, recompute=False), _stepper(um, und, gen, recompute=True)],
        args.steps,
        args.repeats,
        um.device,
    )
    rows = [
        {"reference": "stored", "seconds_per_step": stored_s, "steps_per_s": 1 / stored_s},
        {"reference": "recomputed", "seconds_per_step": recompute_s, "steps_per_s": 1 / recompute_s},
    ]
    table = Table(title=f"Joint DPO step (1 und + 1 gen pair), LoRA r {args.lora_rank}, median of {args.repeats}")
    for column in ("π_ref", "steps/s", "ms/step", "speed-up of stored"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["reference"],
            f"{row['steps_per_s']:.2f}",
            f"{1000 * row['seconds_per_step']:.1f}",
            f"{recompute_s / row['seconds_per_step']:.2f}×",
        )
    Console().print(table)
    payload = {
        "model": args.model or "random tiny (unigap.model.tiny_janus_config, ShapeWorld vocabulary)",
        **machine(um),
        "image_tokens": um.num_image_tokens,
        "mean_answer_tokens": statistics.mean(p.chosen_tokens for p in und),
        "lora_rank": args.lora_rank,
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "losses_equal": bool(np.allclose(losses, recomputed, rtol=1e-5, atol=1e-6)),
        "results": rows,
        "speedup_stored_vs_recomputed": recompute_s / stored_s,
    }
    write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
