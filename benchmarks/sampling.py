"""Image-token sampling speed: unigap's sampler vs transformers' image `generate`, and the compute floor.

Both sample the same prompts on the same model with the same settings (CFG, temperature 1, full softmax —
transformers' default top-k 50 is switched off), one warm-up run each, then the median of `--repeats` timed
runs per batch size, the two samplers taking turns. The prompts are held-out ShapeWorld prompts of every
category, so their lengths differ and rows are left-padded, as real prompt sets are. Reported per batch size:
image tokens per second (batch × tokens / seconds), our speed relative to transformers', milliseconds per
sampling step, whether greedy tokens agree, and the compute floor of a step: 2 FLOPs × (LLM parameters without
the token embeddings + generation head + generation embeddings and aligner) × rows per step (2 × batch with
CFG), attention ignored, at the rate of a 2048 × 2048 matmul in the model's dtype measured on the same threads;
and the weights' memory floor: reading those parameters once per step at the measured copy bandwidth (the KV
cache's reads come on top; attention is left out of both floors). On CUDA, unigap replays each step as a CUDA graph
(`UNIGAP_CUDA_GRAPHS=0` turns it off);
there its eager sampler is timed once too, and its greedy tokens compared with the graphed ones.
Greedy agreement is also given as the fraction of equal tokens and the mean first step that differs: in bf16,
a random model's near-tied logits can flip an argmax between two correct implementations.

    python benchmarks/sampling.py                           # the shipped model, batch sizes 10 and 80
    python benchmarks/sampling.py --model DIR --device cuda --batch-sizes 16 128 --out runs/sampling_gpu.json
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import (check_device, copy_bytes_per_s, guidance_scale, machine, matmul_flops,
                     paired_medians, positive_int, run_main, seconds, write_result)
from transformers import GenerationConfig

from unigap.model import UnifiedModel, load_model
from unigap.model.decoding import left_pad
from unigap.model.sampler import cuda_graphs_enabled
from unigap.world import CATEGORIES, sample_records


def prompts_for(batch: int) -> list[str]:
    """`batch` held-out prompts, categories in turn (so lengths differ within every batch)."""
    pool = [spec.text for c in CATEGORIES for spec, _ in sample_records(batch, 0, "test", category=c, draw_seed=1)]
    by_category = [pool[i * batch : (i + 1) * batch] for i in range(len(CATEGORIES))]
    return [by_category[i % len(CATEGORIES)][i // len(CATEGORIES)] for i in range(batch)]


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


def first_difference(equal: torch.Tensor) -> float:
    """Mean over images of the first step whose token differs (N when none does): a late first difference is
    rounding deciding a near-tie, after which an image goes its own way; a difference at step 0 is a bug."""
    steps = equal.shape[1]
    first = torch.where(equal.all(1), steps, (~equal).float().argmax(1))
    return first.float().mean().item()


def eager_on_cuda(um: UnifiedModel, prompts: list[str], cfg_scale: float, greedy: torch.Tensor) -> dict[str, float]:
    """On CUDA, the sampler without CUDA graphs: ms per step (one timed run after an untimed greedy one, which warms
    the eager path's kernels for every attended length: the graphed runs take another branch) and the fraction of
    greedy tokens equal to the graphed sampler's."""
    previous = os.environ.get("UNIGAP_CUDA_GRAPHS")
    os.environ["UNIGAP_CUDA_GRAPHS"] = "0"
    try:
        eager = um.generate_images(prompts, cfg_scale=cfg_scale, temperature=0.0)
        took = seconds(lambda: um.generate_images(prompts, cfg_scale=cfg_scale, temperature=1.0, seed=0), um.device)
    finally:
        os.environ.pop("UNIGAP_CUDA_GRAPHS")
        if previous is not None:
            os.environ["UNIGAP_CUDA_GRAPHS"] = previous
    return {"unigap_eager_ms_per_step": 1000 * took / um.num_image_tokens,
            "eager_vs_graphs_greedy_agreement": (eager == greedy).float().mean().item(),
            "eager_vs_graphs_first_difference": first_difference(eager == greedy)}


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help='checkpoint directory or "tiny" (default)')
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[10, 80])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--cfg-scale", type=guidance_scale, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = options()
    args = parser.parse_args(argv)
    check_device(parser, args.device, args.dtype)
    if args.cfg_scale <= 1:  # transformers' generate doubles the rows at any scale, but only mixes them above 1
        parser.error(f"--cfg-scale must be > 1 (transformers' image generate needs CFG), got {args.cfg_scale}")
    torch.manual_seed(0)  # transformers' sampling draws from the global generator

    um = load_model(args.model, args.device, args.dtype)
    rate, bandwidth = matmul_flops(um.device, um.dtype), copy_bytes_per_s(um.device)
    parameters = step_parameters(um)
    weight_bytes = parameters * torch.finfo(um.dtype).bits // 8
    payload = {
        "model": args.model,
        **machine(um),
        "cfg_scale": args.cfg_scale,
        "repeats": args.repeats,
        "step_parameters": parameters,
        "matmul_gflops": rate / 1e9,
        "copy_gbytes_per_s": bandwidth / 1e9,
        "cuda_graphs": cuda_graphs_enabled(um.device),
            }
    rows = []
    for batch in args.batch_sizes:
        prompts = prompts_for(batch)
        ours, theirs = paired_medians(
            (
                lambda prompts=prompts: um.generate_images(prompts, cfg_scale=args.cfg_scale, temperature=1.0, seed=0),
                _transformers_sampler(um, prompts, args.cfg_scale, True),
            ),
            args.repeats,
            um.device,
        )
        greedy = um.generate_images(prompts, cfg_scale=args.cfg_scale, temperature=0.0)
        equal = greedy == _transformers_sampler(um, prompts, args.cfg_scale, False)()
        tokens, steps = batch * um.num_image_tokens, um.num_image_tokens
        rows_per_step = 2 * batch  # the conditional and unconditional rows
        row = {
            "batch_size": batch,
            "image_tokens": um.num_image_tokens,
            "unigap_tokens_per_s": tokens / ours,
            "transformers_tokens_per_s": tokens / theirs,
            "speed_ratio": theirs / ours,
            "greedy_tokens_equal": bool(equal.all()),
            "greedy_token_agreement": equal.float().mean().item(),
            "greedy_first_difference": first_difference(equal),
            "unigap_ms_per_step": 1000 * ours / steps,
            "transformers_ms_per_step": 1000 * theirs / steps,
            "floor_ms_per_step": 1000 * 2 * parameters * rows_per_step / rate,
            "memory_floor_ms_per_step": 1000 * weight_bytes / bandwidth,
        }
        rows.append(row | (eager_on_cuda(um, prompts, args.cfg_scale, greedy) if um.device.type == "cuda" else {}))
        write_result(args.out, payload | {"results": rows})  # after every batch size: a cut-off run keeps its rows

    table = Table(title=f"Image-token sampling, CFG {args.cfg_scale}, median of {args.repeats}")
    for column in ("batch", "unigap tok/s", "transformers tok/s", "ratio", "greedy equal", "ms/step", "floor ms/step"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch_size"]),
            f"{row['unigap_tokens_per_s']:.0f}",
            f"{row['transformers_tokens_per_s']:.0f}",
            f"{row['speed_ratio']:.2f}×",
            "yes" if row["greedy_tokens_equal"] else f"{row['greedy_token_agreement']:.1%}",
            f"{row['unigap_ms_per_step']:.2f}",
            f"{row['floor_ms_per_step']:.2f}",
        )
    Console().print(table)
    return payload | {"results": rows}


if __name__ == "__main__":
    run_main(options(), main)
