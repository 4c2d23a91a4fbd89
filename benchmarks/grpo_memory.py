"""What a `refine train` step holds for its backward pass, by `--micro-batch-size`: whole groups against spans.

Why: GRPO scores a group's G samples with gradients, so a step's activations grow with G (at the defaults, about 85
GiB for a generation step of a Janus-Pro-1B by docs/experiments.md's estimate). `micro_batch_size` scores and
back-propagates a span of samples at a time. For one generation step and the refine step from its images, on one
model with one LoRA and the same rollouts for every setting, this records the peak bytes of the tensors autograd
saves for the backward pass (by `torch.autograd.graph.saved_tensors_hooks`, any device: each storage once, the
weights a layer saves not counted), on CUDA the peak allocated memory of the update, and the update's median seconds
over `--repeats`, the settings timed in turn on their stored rollouts (spans cost time).

    python benchmarks/grpo_memory.py                       # the shipped model, CPU
    python benchmarks/grpo_memory.py --model DIR --device cuda --micro-batch-sizes 8 4 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from _common import check_device, machine, positive_int, run_main, write_result

from unigap.model import load_model
from unigap.refine.grpo import GRPOTrainer
from unigap.refine.grpo_config import GRPOConfig
from unigap.refine.rollout import rollout_loss

RESULT = Path(__file__).parent / "results" / "grpo_memory.json"
MIB = 2**20


class SavedPeak:
    """The peak bytes of the storage behind the tensors saved for backward and still alive, while the context is
    open: each storage counted once however many saved tensors view it, the model's weights and buffers not at all
    (a linear layer saves its weight, which costs nothing more)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.views: dict[int, list[int]] = {}  # storage → [bytes, saved tensors viewing it]
        self.live = self.peak = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.weights:
            return tensor
        if key not in self.views:
            self.views[key] = [storage.nbytes(), 0]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.views[key][1] += 1
        weakref.finalize(tensor, self._release, key)  # (a tensor freed with its graph, after its backward)
        return tensor

    def _release(self, key: int) -> None:
        self.views[key][1] -= 1
        if not self.views[key][1]:
            self.live -= self.views.pop(key)[0]

    def __enter__(self) -> SavedPeak:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def update(trainer: GRPOTrainer, config: GRPOConfig, rollouts: list[Any]) -> dict[str, Any]:
    """One update on `rollouts` under `config` (gradients discarded): saved-tensor peak, CUDA peak, seconds."""
    device = trainer.um.device
    for _, parameter in trainer.named:
        parameter.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with SavedPeak(trainer.um.model) as saved:
            for _, rollout, _ in rollouts:
                rollout_loss(rollout, config, divisor=config.prompts_per_step)
    except torch.OutOfMemoryError:  # (whole groups of a large model: recorded, and the spans still run)
        return {"saved_mib": None, "seconds": None, "cuda_peak_mib": None, "out_of_memory": True}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"saved_mib": saved.peak / MIB, "seconds": time.perf_counter() - start,
            "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None}


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny",
                        help='"tiny" (the shipped model) or a checkpoint directory')
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when torch sees it)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 (default: the device's)")
    parser.add_argument("--num-generations", type=positive_int, default=16, help="G: samples per group")
    parser.add_argument("--micro-batch-sizes", type=positive_int, nargs="+", default=[8, 4, 1],
                        help="spans to compare with whole groups")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed updates per setting and stage")
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device, args.dtype)
    um = load_model(args.model, args.device, args.dtype)
    config = GRPOConfig(prompts_per_step=1, num_generations=args.num_generations, eval_n=0)
    trainer = GRPOTrainer(um, config, "unused")
    settings = [replace(config, micro_batch_size=size) for size in [None, *args.micro_batch_sizes]]
    rows: list[dict[str, Any]] = [{"micro_batch_size": c.micro_batch_size} for c in settings]
    for step in (0, 1):  # a generation step, then a refine step from its images (the same rollouts each time)
        stored = []
        for setting, row in zip(settings, rows, strict=True):  # (a rollout's reference is scored span by span)
            trainer.config, trainer.step = setting, step
            trainer._roll_out()
            stored.append(list(trainer.rollouts))
            row[trainer.stage] = update(trainer, setting, stored[-1])
        times: list[list[float]] = [[] for _ in settings]
        for _ in range(args.repeats):  # in turn, so that a noisy machine slows every setting alike
            for setting, rollouts, timed, row in zip(settings, stored, times, rows, strict=True):
                if not row[trainer.stage].get("out_of_memory"):
                    timed.append(update(trainer, setting, rollouts)["seconds"])
        for row, timed in zip(rows, times, strict=True):
            row[trainer.stage]["seconds"] = statistics.median(timed) if timed else None
    table = Table("micro batch", "generate: saved MiB", "refine: saved MiB", "generate s", "refine s",
                  "CUDA peak MiB (gen / ref)", title=f"refine train, G = {args.num_generations}, on {um.device}")
    def cell(value: float | None, digits: int) -> str:
        return "out of memory" if value is None else f"{value:.{digits}f}"

    for row in rows:
        gen, ref = row["generate"], row["refine"]
        cuda = "" if um.device.type != "cuda" else f"{cell(gen['cuda_peak_mib'], 0)} / {cell(ref['cuda_peak_mib'], 0)}"
        table.add_row(str(row["micro_batch_size"] or "whole group"), cell(gen["saved_mib"], 1),
                      cell(ref["saved_mib"], 1), cell(gen["seconds"], 2), cell(ref["seconds"], 2), cuda)
    Console().print(table)
    write_result(args.out, {"benchmark": "grpo_memory", "model": args.model, "num_generations": args.num_generations,
                            "results": rows, **machine(um)})


if __name__ == "__main__":
    run_main(options(), main)
