"""Multi-task DPO step speed and model FLOP utilisation (MFU): reference log-probs stored in the pairs vs
recomputed every step, at one or more batch sizes.

Both variants run the same joint step on the same LoRA model — `--batch-sizes` understanding pairs and as many
generation pairs, each task's DPO loss (`task_dpo_loss`), backward, clip, AdamW — and differ only in where π_ref
comes from: the pair's stored numbers (what `unigap prefs build` writes), or a no-grad pass of the base model
(adapters disabled) for chosen and rejected before every step (`with_reference`). One warm-up run each, then
the median of `--repeats` timed runs of `--steps` steps, the variants taking turns. Also checks that both give
the same loss (the stored numbers are the base model's).

MFU = the FLOPs a step executes (counted by torch's `FlopCounterMode` over one step: matmuls and attention,
forward and backward; a frozen base computes input gradients but no weight gradients) / seconds per step / the
device's peak: the datasheet's dense bf16 rate for known GPUs (`--peak-tflops` to override), else the measured
rate of a square matmul in the model's dtype. The measured matmul rate is recorded beside it. A batch size
that runs out of memory ends the sweep and is recorded as such. With `--gradient-checkpointing` (activations
recomputed in the backward pass: less memory, so larger batches fit) the model FLOPs leave the recomputed forward
pass out, as MFU's convention is (the executed FLOPs less the checkpointed layers' forward pass, counted without
gradients); the FLOPs the step executes, recomputation included, give the hardware FLOP utilisation (`hfu`) beside
it.

    python benchmarks/dpo_step.py                          # random tiny model (ShapeWorld vocabulary)
    python benchmarks/dpo_step.py --model DIR --device cuda --batch-sizes 1 4 8
    python benchmarks/dpo_step.py --model DIR --device cuda --batch-sizes 8 16 32 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers.modeling_layers import GradientCheckpointingLayer

from _common import (check_device, machine, matmul_flops, paired_medians, positive_float, positive_int,
                     run_main, write_result)

import unigap.world
from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.model.images import vq_image_size
from unigap.train.dpo import DPOOptions, GenerationPair, Pair, UnderstandingPair, task_dpo_loss, with_reference


# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, by the exact name torch reports (SXM parts;
# NVL and PCIe parts run lower clocks: pass --peak-tflops for those).
DATASHEET_BF16_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 80GB HBM3": 989.4, "NVIDIA A100-SXM4-80GB": 312.0}


def datasheet_peak(um: UnifiedModel, override_tflops: float | None) -> tuple[float, str] | None:
    """The peak MFU divides by when one is known (the override, else a GPU's datasheet), and where it comes from."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if um.device.type == "cuda":
        name = torch.cuda.get_device_name(um.device)
        if name in DATASHEET_BF16_TFLOPS:
            return DATASHEET_BF16_TFLOPS[name] * 1e12, f"datasheet dense bf16 ({name})"
    return None


def _tiny_model(directory: Path, device: str | None, dtype: str | None) -> UnifiedModel:
    return load_model(save_random_tiny(directory, unigap.world.vocabulary()), device, dtype)


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
    um: UnifiedModel, und: Sequence[Pair], gen: Sequence[Pair], recompute: bool, batch: int
) -> Callable[[int], float]:
    """A function doing a joint DPO step on the first `batch` pairs of each task (the same every step, so one
    step's FLOP count holds for all); returns the summed loss."""
    params = um.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)

    def step(i: int) -> float:
        batches = [list(pairs[:batch]) for pairs in (und, gen)]
        if recompute:
            batches = [with_reference(um, batch) for batch in batches]
        total = sum(task_dpo_loss(um, batch, DPOOptions()).loss for batch in batches)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    return step


def _policy_forward(um: UnifiedModel, und: Sequence[Pair], gen: Sequence[Pair], batch: int) -> Callable[[], object]:
    """The policy's forward pass of a step on the first `batch` pairs of each task (the part activation
    checkpointing recomputes: a recomputed π_ref runs without gradients, so is never recomputed)."""
    return lambda: [task_dpo_loss(um, list(pairs[:batch]), DPOOptions()) for pairs in (und, gen)]


def _counted(device: torch.device) -> Any:
    """FLOPs counted with attention in SDPA's math backend on a CPU: torch's counter has no formula for the CPU's
    fused kernel, and counts it as 0."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else nullcontext()


def step_flops(step: Callable[[int], float], device: torch.device) -> int:
    """FLOPs one call of `step` executes (matmuls and attention, forward and backward)."""
    with FlopCounterMode(display=False) as counter, _counted(device):
        step(0)
    return counter.get_total_flops()


def recomputed_flops(um: UnifiedModel, forward: Callable[[], object]) -> int:
    """The FLOPs activation checkpointing adds to a step: the forward pass of each checkpointed layer the backward
    pass runs through (those holding trained parameters), counted in `forward`, the step's policy forward pass, run
    without gradients."""
    layers = [name for name, module in um.model.named_modules() if isinstance(module, GradientCheckpointingLayer)
              and module.gradient_checkpointing and any(p.requires_grad for p in module.parameters())]
    with FlopCounterMode(display=False) as counter, _counted(um.device), torch.no_grad():
        forward()

    def checkpointed(key: str) -> bool:  # (the counter names a module from the class of the one first called)
        tail = key.partition(".")[2]
        return bool(tail) and any(name == tail or name.endswith("." + tail) for name in layers)

    return sum(sum(ops.values()) for key, ops in counter.get_flop_counts().items() if checkpointed(key))


def model_and_executed_flops(um: UnifiedModel, step: Callable[[int], float],
                             forward: Callable[[], object]) -> tuple[int, int]:
    """(model FLOPs, executed FLOPs) of one step: equal unless activation checkpointing recomputes the forward
    pass, whose extra work MFU leaves out and HFU counts. The model FLOPs are the executed ones less that recomputed
    forward pass, not a step counted without checkpointing: that step needs the memory checkpointing saves, and ran
    out of it at exactly the batches checkpointing is for."""
    executed = step_flops(step, um.device)
    if not um.model.is_activation_checkpointing:
        return executed, executed
    return executed - recomputed_flops(um, forward), executed


def summary(rows: list[dict]) -> dict:
    """The rows, the best MFU of each π_ref variant (peak memory is per batch size, both variants), and the
    stored variant's speed-up."""
    timed = [row for row in rows if not row.get("out_of_memory")]
    best = {reference: max((row for row in timed if row["reference"] == reference), key=lambda row: row["mfu"],
                           default=None) for reference in ("stored", "recomputed")}
    stored = {row["batch_size"]: row["seconds_per_step"] for row in timed if row["reference"] == "stored"}
    return {
        "results": rows,
        "best_mfu": {reference: {"batch_size": row["batch_size"], "mfu": row["mfu"]}
                     for reference, row in best.items() if row is not None},
        "speedup_stored_vs_recomputed": {
            str(row["batch_size"]): row["seconds_per_step"] / stored[row["batch_size"]]
            for row in timed if row["reference"] == "recomputed"
        },
    }


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--lora-rank", type=positive_int, default=64)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1], help="pairs per task per step")
    parser.add_argument("--steps", type=positive_int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, larger batches)")
    parser.add_argument("--peak-tflops", type=positive_float, default=None,
                        help="the peak MFU divides by (default: see above)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dpo_step.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device, args.dtype)

    with tempfile.TemporaryDirectory() as scratch:
        um = (load_model(args.model, args.device, args.dtype) if args.model
              else _tiny_model(Path(scratch), args.device, args.dtype))
    und, gen = _pairs(um, max(4, *args.batch_sizes))
    um.add_lora(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0,  # dropout off: equal losses below
                gradient_checkpointing=args.gradient_checkpointing)
    um.model.train()
    losses = [task_dpo_loss(um, [p], DPOOptions()).metrics["dpo_loss"] for p in (und[0], gen[0])]
    recomputed = [
        task_dpo_loss(um, with_reference(um, [p]), DPOOptions()).metrics["dpo_loss"] for p in (und[0], gen[0])
    ]
    cuda = um.device.type == "cuda"
    side = 8192 if cuda else 2048
    measured = matmul_flops(um.device, um.dtype, side)
    peak, peak_source = datasheet_peak(um, args.peak_tflops) or (measured, f"measured {side}² matmul, {um.dtype}")
    payload = {
        "model": args.model or "random tiny (unigap.model.tiny_janus_config, ShapeWorld vocabulary)",
        **machine(um),
        "image_tokens": um.num_image_tokens,
        "mean_answer_tokens": statistics.mean(p.chosen_tokens for p in und),
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing,
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "losses_equal": bool(np.allclose(losses, recomputed, rtol=1e-5, atol=1e-6)),
        "attention": um.model.config._attn_implementation,
        "peak_tflops": peak / 1e12,
        "peak_source": peak_source,
        "measured_matmul_tflops": measured / 1e12,
    }
    rows: list[dict] = []
    for batch in args.batch_sizes:
        try:
            steppers = [_stepper(um, und, gen, recompute, batch) for recompute in (False, True)]
            flops = [model_and_executed_flops(um, step, _policy_forward(um, und, gen, batch)) for step in steppers]
            if cuda:  # (after the counting: the peak is the timed steps')
                torch.cuda.reset_peak_memory_stats(um.device)
            runs = [lambda step=step: [step(i) for i in range(args.steps)] for step in steppers]
            seconds = [run / args.steps for run in paired_medians(runs, args.repeats, um.device)]
        except torch.OutOfMemoryError:
            rows.append({"batch_size": batch, "out_of_memory": True})
        else:
            memory = {"peak_memory_gib": torch.cuda.max_memory_allocated(um.device) / 2**30} if cuda else {}
            for reference, (count, executed), second in zip(("stored", "recomputed"), flops, seconds, strict=True):
                rows.append({
                    "batch_size": batch, "reference": reference, "seconds_per_step": second, "steps_per_s": 1 / second,
                    "flops_per_step": count, "achieved_tflops": count / second / 1e12, "mfu": count / second / peak,
                    "executed_flops_per_step": executed, "hfu": executed / second / peak,
                    "fraction_of_measured_matmul": count / second / measured,
                } | memory)
        finally:
            if cuda:
                torch.cuda.empty_cache()
        payload = payload | summary(rows)
        write_result(args.out, payload)  # after every batch size: a run cut off later keeps its rows
        if rows[-1].get("out_of_memory"):
            break
    checkpointed = ", activation checkpointing" if args.gradient_checkpointing else ""
    table = Table(title=f"Joint DPO step (n und + n gen pairs), LoRA r {args.lora_rank}{checkpointed}, "
                        f"median of {args.repeats}")
    columns = ("n", "π_ref", "ms/step", "TFLOP/step", "TFLOP/s", "MFU", *(("HFU",) if checkpointed else ()))
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        if row.get("out_of_memory"):
            table.add_row(str(row["batch_size"]), "out of memory", *[""] * (len(columns) - 2))
            continue
        table.add_row(
            str(row["batch_size"]), row["reference"], f"{1000 * row['seconds_per_step']:.1f}",
            f"{row['flops_per_step'] / 1e12:.3f}", f"{row['achieved_tflops']:.2f}", f"{row['mfu']:.1%}",
            *((f"{row['hfu']:.1%}",) if checkpointed else ()),
        )
    Console().print(table)
    return payload


if __name__ == "__main__":
    run_main(options(), main)
