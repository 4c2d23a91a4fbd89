"""Held-out evaluation data: test-split prompts and scenes of a fixed partition, drawn with any seed.

Why not `sample_records(n, seed, "test")` directly: there the seed is both the partition seed and the
sampling seed, so evaluating with seeds 1 and 2 would move the test split and put prompts the model was
trained on (under the training data's seed) into it. Here the partition is fixed by `data_seed` (the seed
the training data was sampled with) and `seed` only draws from it; with seed == data_seed the pairs are
exactly `sample_records(n, data_seed, "test")`.
"""

from __future__ import annotations

import numpy as np

from unigap.errors import UserError
from unigap.world import (
    CATEGORIES,
    DEFAULT_CANVAS,
    SPLITS,
    PromptSpec,
    Scene,
    sample_scene_for,
    scene_split,
    split_prompts,
)

HELD_OUT = "test"


def held_out_pairs(
    n: int, seed: int, data_seed: int = 0, canvas: int = DEFAULT_CANVAS
) -> list[tuple[PromptSpec, Scene]]:
    """n (test prompt, test scene satisfying it) pairs: category uniform, then prompt uniform in it."""
    if n <= 0:
        raise UserError(f"n must be positive, got {n}")
    pools = [split_prompts(HELD_OUT, data_seed, category) for category in CATEGORIES]
    rng = np.random.default_rng([seed, SPLITS.index(HELD_OUT)])
    pairs = []
    for _ in range(n):
        pool = pools[rng.integers(len(pools))]
        spec = pool[rng.integers(len(pool))]
        scene = sample_scene_for(spec, rng, canvas)
        while scene_split(scene, data_seed) != HELD_OUT:
            scene = sample_scene_for(spec, rng, canvas)
        pairs.append((spec, scene))
    return pairs
