"""Held-out evaluation data: test-split prompts and scenes of a fixed partition, drawn with any seed.

Why not `sample_records(n, seed, "test")` directly: there the seed is both the partition seed and the
sampling seed, so evaluating with seeds 1 and 2 would move the test split and put prompts the model was
trained on (under the training data's seed) into it. Here the partition is fixed by `data_seed` (the seed
the training data was sampled with) and `seed` only draws from it; with seed == data_seed the pairs are
exactly `sample_records(n, data_seed, "test")`.
"""

from __future__ import annotations

from unigap.errors import UserError
from unigap.world import DEFAULT_CANVAS, PromptSpec, Scene, sample_records

HELD_OUT = "test"
HELD_OUT_SPLITS = ("test", "val")


def held_out_pairs(
    n: int, seed: int, data_seed: int = 0, canvas: int = DEFAULT_CANVAS, split: str = HELD_OUT
) -> list[tuple[PromptSpec, Scene]]:
    """n (held-out prompt, held-out scene satisfying it) pairs of `split` (test by default; val for choosing
    settings): category uniform, then prompt uniform in it."""
    if split not in HELD_OUT_SPLITS:
        raise UserError(f"evaluation split must be one of {', '.join(HELD_OUT_SPLITS)}, got {split!r}")
    return sample_records(n, data_seed, split, canvas=canvas, draw_seed=seed)
