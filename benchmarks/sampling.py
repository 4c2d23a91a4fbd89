"""Image-token sampling speed: unigap's batched CFG sampler vs transformers' image `generate`.

Both sample the same prompts on the same model with the same settings (CFG, temperature 1, full
softmax — transformers' default top-k 50 is switched off), one warm-up run each, then the median of
`--repeats` timed runs per batch size, the two samplers taking turns. Reported: image tokens per
second (batch × tokens / seconds) and our speed relative to transformers'. Also checks that greedy
tokens agree.

    python benchmarks/sampling.py                        # random tiny model, batch sizes 1 and 8
    python benchmarks/sampling.py --model DIR --device cuda --batch-sizes 1 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import machine, write_result
from transformers import GenerationConfig

from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.model.decoding import left_pad

PROMPTS = [
    "a red circle",
    "a big blue square",
    "a small green triangle",
    "a yellow star",
    "a red square",
    "a blue circle",
    "a big green star",
    "a small yellow triangle",
]


def _tiny_model(directory: Path) -> UnifiedModel:
    words = sorted({word for prompt in PROMPTS for word in prompt.split()})
    return load_model(save_random_tiny(directory, words))


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
    parser.add_argument("--model", help="checkpoint directory (default: a random tiny model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        um = load_model(args.model, args.device, args.dtype) if args.model else _tiny_model(Path(scratch))
    rows = []
    for batch in args.batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
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
        tokens = batch * um.num_image_tokens
        rows.append(
            {
                "batch_size": batch,
                "image_tokens": um.num_image_tokens,
                "unigap_tokens_per_s": tokens / ours,
                "transformers_tokens_per_s": tokens / theirs,
                "speed_ratio": theirs / ours,
                "greedy_tokens_equal": greedy_equal,
            }
        )

    table = Table(title=f"Image-token sampling, CFG {args.cfg_scale}, median of {args.repeats}")
    for column in ("batch", "unigap tok/s", "transformers tok/s", "unigap / transformers", "greedy equal"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch_size"]),
            f"{row['unigap_tokens_per_s']:.0f}",
            f"{row['transformers_tokens_per_s']:.0f}",
            f"{row['speed_ratio']:.2f}×",
            "yes" if row["greedy_tokens_equal"] else "NO",
        )
    Console().print(table)
    payload = {
        "model": args.model or "random tiny (unigap.model.tiny_janus_config)",
        **machine(um),
        "cfg_scale": args.cfg_scale,
        "repeats": args.repeats,
        "results": rows,
    }
    write_result(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
