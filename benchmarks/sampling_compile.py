"""Does `torch.compile` of the sampler's decoding step pay on this machine? Eager against compiled, side by side.

The sampler's step (`unigap.model.sampler.decode_step`) is compiled as it is, with dynamic shapes (the attended
length grows by one each step), and swapped in for the eager one. Each batch size runs in a process of its own with
an empty inductor cache directory, so its first call is the full compile cost a fresh job pays (in one process a
later size would reuse the compiler's start-up and in-memory caches, and look cheaper than it is).
Reported per batch size: eager and compiled ms per sampling step (median of `--repeats`, taking turns), the
speed-up, whether greedy tokens agree, and how many images a job must sample before the compile cost is paid back.
unigap does not compile by default: on the 2-core CPU it does not pay (docs/experiments.md). `--freezing` folds
the weights into the compiled code as constants (on a CPU, inductor then prepacks them for oneDNN's matmuls) and
`--cpp-wrapper` calls the compiled kernels from C++ instead of Python: the two inductor options that remove the most
per-step overhead on a CPU.

    python benchmarks/sampling_compile.py        # the shipped model, batch sizes 10 and 80
    python benchmarks/sampling_compile.py --freezing --cpp-wrapper --out benchmarks/results/sampling_compile_frozen.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._inductor.config
from rich.console import Console
from rich.table import Table

from _common import (check_device, check_model, guidance_scale, machine, paired_medians, positive_int, run_main,
                     write_result)
from sampling import prompts_for

import unigap.model.sampler as sampler
from unigap.errors import UserError
from unigap.model import load_model
from unigap.model.sampler import decode_step


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help='checkpoint directory or "tiny" (default)')
    parser.add_argument("--device", default="cpu", help="cpu (default): the machine the compile is timed on")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[10, 80])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--cfg-scale", type=guidance_scale, default=5.0)
    parser.add_argument("--freezing", action="store_true", help="inductor's freezing (weights as constants)")
    parser.add_argument("--cpp-wrapper", action="store_true", help="inductor's C++ wrapper (no Python per call)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling_compile.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    check_model(parser, args.model)  # (before a process per batch size starts)
    if len(args.batch_sizes) > 1:
        return _each_in_its_own_process(args)
    inductor = {"freezing": args.freezing, "cpp_wrapper": args.cpp_wrapper}
    torch._inductor.config.freezing, torch._inductor.config.cpp_wrapper = args.freezing, args.cpp_wrapper

    um = load_model(args.model, args.device)
    steps, rows = um.num_image_tokens, []

    def sample(prompts: list[str], step: object, temperature: float = 1.0) -> torch.Tensor:
        sampler.decode_step = step
        try:
            return um.generate_images(prompts, cfg_scale=args.cfg_scale, temperature=temperature, seed=0)
        finally:
            sampler.decode_step = decode_step

    for batch in args.batch_sizes:
        prompts = prompts_for(batch)
        with tempfile.TemporaryDirectory(prefix="unigap-inductor-") as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            compiled = torch.compile(decode_step, dynamic=True)
            start = time.perf_counter()
            greedy = sample(prompts, compiled, 0.0)  # the first call at this shape compiles
            first_call = time.perf_counter() - start
            eager, fast = paired_medians(
                (lambda p=prompts: sample(p, decode_step), lambda p=prompts, c=compiled: sample(p, c)),
                args.repeats, um.device,
            )
        saved_per_image = (eager - fast) / batch
        rows.append({
            "batch_size": batch, "eager_ms_per_step": 1000 * eager / steps, "compiled_ms_per_step": 1000 * fast / steps,
            "speedup": eager / fast, "first_call_s": first_call,  # the first call compiles
            "greedy_tokens_equal": torch.equal(greedy, sample(prompts, decode_step, 0.0)),
            # the compile's own cost: the first call less the compiled sampling it also did
            "break_even_images": (first_call - fast) / saved_per_image if saved_per_image > 0 else None,
        })

    payload = {"model": args.model, **machine(um), "torch": torch.__version__, "cfg_scale": args.cfg_scale,
               "repeats": args.repeats, "inductor": inductor, "results": rows}
    _show(payload)
    write_result(args.out, payload)
    return payload


def _each_in_its_own_process(args: argparse.Namespace) -> dict:
    """The script once per batch size, each in a fresh process (a cold compile), their rows in one result."""
    own = ["--model", args.model, "--device", args.device, "--repeats", str(args.repeats),
           "--cfg-scale", str(args.cfg_scale), *(["--freezing"] if args.freezing else []),
           *(["--cpp-wrapper"] if args.cpp_wrapper else [])]
    payload, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="unigap-compile-") as scratch:
        for batch in args.batch_sizes:
            part = Path(scratch) / f"{batch}.json"
            child = subprocess.run([sys.executable, __file__, *own, "--batch-sizes", str(batch), "--out", str(part)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if child.returncode == 2 and ": error: " in child.stderr:  # it refused an option in argparse's line
                raise UserError(child.stderr.strip().splitlines()[-1].split(": error: ", 1)[1])  # (the parent's too)
            sys.stderr.write(child.stderr)
            child.check_returncode()
            payload = json.loads(part.read_text())
            rows += payload["results"]
    payload["results"] = rows
    _show(payload)
    write_result(args.out, payload)
    return payload


def _show(payload: dict) -> None:
    rows = payload["results"]
    table = Table(title=f"torch.compile of the decoding step, CFG {payload['cfg_scale']}, median of "
                        f"{payload['repeats']}")
    for column in ("batch", "eager ms/step", "compiled ms/step", "speed-up", "compile s", "greedy equal",
                   "pays after images"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["batch_size"]), f"{row['eager_ms_per_step']:.2f}", f"{row['compiled_ms_per_step']:.2f}",
                      f"{row['speedup']:.2f}×", f"{row['first_call_s']:.1f}",
                      "yes" if row["greedy_tokens_equal"] else "NO",
                      "never" if row["break_even_images"] is None else f"{row['break_even_images']:.0f}")
    Console().print(table)


if __name__ == "__main__":
    run_main(options(), main)
