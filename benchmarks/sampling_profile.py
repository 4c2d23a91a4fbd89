"""Where a sampling step's time goes: matrix products, attention, drawing tokens, and everything else.

`benchmarks/sampling.py` compares unigap's sampler with transformers' `generate` and with a compute floor; this
script says why the gap to the floor is what it is. It runs the sampler once per batch size under
`torch.profiler` and sums each operator's own CPU time into four groups, per decoding step:
- matmul: the linear layers' products (`aten::mm`, `addmm`, `bmm`, `baddbmm`), with the rate they reached
  (their FLOPs, counted from their shapes in a second profiled run, over their time in the first) next to a
  2048 x 2048 matmul's on the same threads;
- attention: the fused attention kernel (`scaled_dot_product_*`);
- sampling: softmax, the random draw and the log-probs of the drawn tokens;
- other: norms (`aten::div_` too: in a sampling call every one is the divide inside RMSNorm's `aten::mean`), rotary
  embeddings, activations, copies into the cache and the dispatch of every small op.
The prompt's prefill is included (one pass, against 64 decoding steps). The profiler adds its own cost to every
operator, so read shares, and take absolute times from `benchmarks/sampling.py`.

    python benchmarks/sampling_profile.py      # the shipped model, batch sizes 10 and 80
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import (check_device, guidance_scale, machine, matmul_flops, positive_int, run_main,
                     write_result)
from sampling import prompts_for

from unigap.model import load_model

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("scaled_dot_product",),
    "sampling": ("aten::_softmax", "aten::_log_softmax", "aten::exponential_", "aten::multinomial", "aten::argmax",
                 "aten::gather"),
}


def group_of(name: str) -> str:
    """The group an operator's time counts in (`other` when none matches)."""
    for group, patterns in GROUPS.items():
        if any(pattern in name for pattern in patterns):
            return group
    return "other"


def matmul_flops_of(event: object) -> float:
    """FLOPs of a profiled matrix-product event from its input shapes (2·m·k·n per product, times its count)."""
    if event.key not in GROUPS["matmul"]:
        return 0.0
    shapes = [shape for shape in event.input_shapes if shape]
    if event.key in ("aten::addmm", "aten::baddbmm"):
        shapes = shapes[1:]  # the added term comes first
    (*batch, m, k), (*_, n) = shapes[0], shapes[1]
    return 2.0 * m * k * n * (batch[0] if batch else 1) * event.count


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help='checkpoint directory or "tiny" (default)')
    parser.add_argument("--device", default="cpu", help="cpu (default): a CPU study (its profile times CPU work)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[10, 80])
    parser.add_argument("--cfg-scale", type=guidance_scale, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling_profile.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device)

    um = load_model(args.model, args.device)
    rate = matmul_flops(um.device, um.dtype)
    steps, rows = um.num_image_tokens, []
    for batch in args.batch_sizes:
        prompts = prompts_for(batch)
        um.generate_images(prompts, cfg_scale=args.cfg_scale, seed=0)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as timed:
            um.generate_images(prompts, cfg_scale=args.cfg_scale, seed=0)
        seconds = dict.fromkeys([*GROUPS, "other"], 0.0)
        for event in timed.key_averages():
            seconds[group_of(event.key)] += event.self_cpu_time_total / 1e6
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as shaped:
            um.generate_images(prompts, cfg_scale=args.cfg_scale, seed=0)  # (recording shapes slows every op)
        matmul_flop = sum(matmul_flops_of(event) for event in shaped.key_averages(group_by_input_shape=True))
        total = sum(seconds.values())
        row = {"batch_size": batch, "profiled_ms_per_step": 1000 * total / steps}
        for group, spent in seconds.items():
            row[f"{group}_ms_per_step"] = 1000 * spent / steps
            row[f"{group}_share"] = spent / total
        row["matmul_gflops"] = matmul_flop / seconds["matmul"] / 1e9 if seconds["matmul"] else None
        rows.append(row)

    table = Table(title=f"Where a sampling step's time goes (profiled, CFG {args.cfg_scale}; 2048² matmul "
                        f"{rate / 1e9:.0f} GFLOP/s)")
    for column in ("batch", "ms/step (profiled)", *(f"{g} share" for g in [*GROUPS, "other"]), "matmul GFLOP/s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), f"{row['profiled_ms_per_step']:.1f}",
                      *(f"{row[f'{g}_share']:.0%}" for g in [*GROUPS, "other"]),
                      f"{row['matmul_gflops']:.0f}" if row["matmul_gflops"] else "—")
    Console().print(table)
    payload = {"model": args.model, **machine(um), "torch": torch.__version__, "cfg_scale": args.cfg_scale,
               "matmul_gflops_2048": rate / 1e9, "results": rows}
    write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    run_main(options(), main)
