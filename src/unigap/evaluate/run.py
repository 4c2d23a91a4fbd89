"""One call that measures a model: the numbers every later stage (DPO, the study) compares."""

from __future__ import annotations

from typing import Any

from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.generation import generate_and_judge, generation_metrics
from unigap.evaluate.progress import check_batch_size
from unigap.evaluate.understanding import (
    DEFAULT_MAX_NEW_TOKENS,
    answer_items,
    understanding_items,
    understanding_metrics,
)


def evaluate(
    um: Any,
    n: int = 200,
    seed: int = 0,
    *,
    data_seed: int = 0,
    batch_size: int = 32,
    cfg_scale: float | None = 5.0,
    temperature: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
) -> dict[str, Any]:
    """Understanding and generation metrics on n held-out items (n questions, n prompts → n images).

    `um` is a `UnifiedModel` (or anything with its `answer`, `judge`, `generate_images` and
    `decode_tokens`). The result holds `config`, the metric objects `understanding`, `generation`,
    `nonunification`, `weak_generation`, `judge`, and `records` (`understanding` and `generation`:
    one dict per item) for per-item statistics. Same arguments on the same device ⇒ the same numbers.
    """
    check_batch_size(batch_size)
    pairs = held_out_pairs(n, seed, data_seed)
    items = understanding_items(n, seed, data_seed, pairs)
    understanding_records = answer_items(um, items, batch_size, max_new_tokens, progress)
    _, generation_records = generate_and_judge(
        um, [spec for spec, _ in pairs], seed, batch_size, cfg_scale, temperature, progress
    )
    config = {
        "n": n,
        "seed": seed,
        "data_seed": data_seed,
        "batch_size": batch_size,
        "cfg_scale": cfg_scale,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
    }
    return {
        "config": config,
        "understanding": understanding_metrics(understanding_records),
        **generation_metrics(generation_records),
        "records": {"understanding": understanding_records, "generation": generation_records},
    }
