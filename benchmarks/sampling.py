"""Image-token sampling speed: unigap's sampler vs transformers' image `generate`, and the compute floor.

Both sample the same prompts on the same model with the same settings (CFG, temperature 1, full softmax —
transformers' default top-k 50 is switched off), one warm-up run each, then the median of `--repeats` timed
runs per batch size, the two samplers taking turns. The prompts are held-out ShapeWorld prompts of every
category, so their lengths differ and rows are left-padded, as real prompt sets are. Reported per batch size:
image tokens per second (batch × tokens / seconds), our speed relative to transformers', milliseconds per
sampling step, whether greedy tokens agree, and the compute floor of a step: 2 FLOPs × (LLM parameters without
the token embeddings + generation head + generation embeddings and aligner) × rows per step (2 × batch with
CFG), attention ignored, at the rate of a 2048 × 2048 fp32 matmul measured on the same threads.

    python benchmarks/sampling.py                           # the shipped model, batch sizes 10 and 80
    python benchmarks/sampling.py --model DIR --device cuda --batch-sizes 16 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import machine, write_result
from transformers import GenerationConfig

from unigap.model import UnifiedModel, load_model
from unigap.model.decoding import left_pad
from unigap.world import CATEGORIES, sample_records

MATMUL = 2048


def prompts_for(batch: int) -> list[str]:
    """`batch` held-out prompts, categories in turn (so lengths differ within every batch)."""
    pool = [spec.text for c in CATEGORIES for spec, _ in sample_records(batch, 0, "test", category=c, draw_seed=1)]
    by_category = [pool[i * batch : (i + 1) * batch] for i in range(len(CATEGORIES))]
    return [by_category[i % len(CATEGORIES)][i // len(CATEGORIES)] for i in range(batch)]


def matmul_flops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of a square matmul of side MATMUL on this device, dtype and thread count (median of repeats)."""
    a = torch.randn(MATMUL, MATMUL, device=device, dtype=dtype)
    b = torch.randn(MATMUL, MATMUL, device=device, dtype=dtype)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * MATMUL**3 / statistics.median(seconds[1:])


def step_parameters(um: UnifiedModel) -> int:
    """Parameters one sampling step multiplies by: the LLM without its token embeddings, the generation head,
    the generation embeddings and aligner."""
    lm, janus = um.model.model.language_model, um.model.model
    count = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    for module in (janus.generation_head, janus.generation_embeddings, janus.generation_aligner):
        count += sum(p.numel() for p in module.parameters())
    return count


def _transformers_sampler(um: UnifiedModel, prompts: list[str], cfg_scale: float, do_sample: bool) -> Callable:
    ids, mask = left_pad([um.prompts.generation_ids(p) for p in prompts], um.prompts.ids.pad)
    ids, mask = ids.to(um.device), mask.to(um.device)
    config = GenerationConfig(
        do_sample=do_sample,
        temperature=1.0 if do_sample else None,
        top_k=0 if do_sample else None,
        guidance_scale=cfg_scale,
        bos_token_id=um.prompts.ids.bos,
        pad_token_id=um.prompts.ids.pad,
        eos_token_id=um.prompts.ids.eos,
        generation_kwargs={"boi_token_id": um.prompts.ids.boi},
        max_length=ids.shape[1] + um.num_image_tokens,
    )
    return lambda: um.model.generate(ids, attention_mask=mask, generation_mode="image", generation_config=config)


def _paired_medians(
    runs: tuple[Callable[[], object], Callable[[], object]], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of each run, timed in alternation so a noisy machine slows both alike."""

    def timed(run: Callable[[], object]) -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for run in runs:  # warm-up
        timed(run)
    seconds: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, samples in zip(runs, seconds, strict=True):
            samples.append(timed(run))
    return statistics.median(seconds[0]), statistics.median(seconds[1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help='checkpoint directory or "tiny" (default)')
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 80])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling.json"))
    args = parser.parse_args(argv)

    um = load_model(args.model, args.device, args.dtype)
    rate = matmul_flops(um.device, um.dtype)
    parameters = step_parameters(um)
    rows = []
    for batch in args.batch_sizes:
        prompts = prompts_for(batch)
        ours, theirs = _paired_medians(
            (
                lambda prompts=prompts: um.generate_images(prompts, cfg_scale=args.cfg_scale, temperature=1.0, seed=0),
                _transformers_sampler(um, prompts, args.cfg_scale, True),
            ),
            args.repeats,
            um.device,
        )
        greedy_equal = torch.equal(
            um.generate_images(prompts, cfg_scale=args.cfg_scale, temperature=0.0),
            _transformers_sampler(um, prompts, args.cfg_scale, False)(),
        )
        tokens, steps = batch * um.num_image_tokens, um.num_image_tokens
        rows_per_step = 2 * batch if args.cfg_scale != 1.0 else batch
        rows.append(
            {
                "batch_size": batch,
                "image_tokens": um.num_image_tokens,
                "unigap_tokens_per_s": tokens / ours,
                "transformers_tokens_per_s": tokens / theirs,
                "speed_ratio": theirs / ours,
                "greedy_tokens_equal": greedy_equal,
                "unigap_ms_per_step": 1000 * ours / steps,
                "transformers_ms_per_step": 1000 * theirs / steps,
                "floor_ms_per_step": 1000 * 2 * parameters * rows_per_step / rate,
            }
        )

    table = Table(title=f"Image-token sampling, CFG {args.cfg_scale}, median of {args.repeats}")
    for column in ("batch", "unigap tok/s", "transformers tok/s", "ratio", "greedy equal", "ms/step", "floor ms/step"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch_size"]),
            f"{row['unigap_tokens_per_s']:.0f}",
            f"{row['transformers_tokens_per_s']:.0f}",
            f"{row['speed_ratio']:.2f}×",
            "yes" if row["greedy_tokens_equal"] else "NO",
            f"{row['unigap_ms_per_step']:.2f}",
            f"{row['floor_ms_per_step']:.2f}",
        )
    Console().print(table)
    payload = {
        "model": args.model,
        **machine(um),
        "cfg_scale": args.cfg_scale,
        "repeats": args.repeats,
        "step_parameters": parameters,
        "matmul_gflops": rate / 1e9,
        "results": rows,
    }
    write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
