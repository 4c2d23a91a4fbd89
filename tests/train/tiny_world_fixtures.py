"""Tiny random Janus models over the ShapeWorld vocabulary, and preference pairs on them.

A uniquely named module (not a conftest) so that tests/train and tests/prefs share it without
picking up each other's conftest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import unigap.world
from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.train.dpo import GenerationPair, UnderstandingPair, with_reference

LORA_RANK = 4


def build_tiny_world_model(directory: Path, seed: int = 0) -> Path:
    """Save a random tiny Janus (2 layers, 64 wide: fast on CPU) whose tokenizer knows every ShapeWorld word."""
    return save_random_tiny(directory, unigap.world.vocabulary(), seed, hidden_size=64, num_layers=2, num_heads=2)


def lora_model(directory: Path, seed: int = 0) -> UnifiedModel:
    """The tiny model with a rank-4 adapter whose B factors are random (so gradients reach A too)."""
    um = load_model(directory)
    um.add_lora(rank=LORA_RANK, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in um.shared_lora_parameters().by_factor["lora_B"]:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return um


def random_pairs(um: UnifiedModel, n: int, seed: int = 0) -> tuple[list[UnderstandingPair], list[GenerationPair]]:
    """n understanding and n generation pairs on train-split scenes, with reference log-probs attached."""
    rng = np.random.default_rng(seed)
    und, gen = [], []
    for spec, scene in unigap.world.sample_records(n, seed, "train"):
        q = unigap.world.sample_question(scene, rng)
        und.append(UnderstandingPair(unigap.world.render(scene), q.text, q.answer, "no idea", 0.0, 0.0, 0, 0))
        tokens = rng.integers(0, um.codebook_size, size=(2, um.num_image_tokens)).tolist()
        gen.append(GenerationPair(spec.text, tuple(tokens[0]), tuple(tokens[1]), 0.0, 0.0))
    return with_reference(um, und), with_reference(um, gen)
