"""Verifier vs clutter: generation accuracy of images that hold no intent, with and without the object limit.

Why: the verifier judges GenEval-style ("a circle" holds if some circle is found; unmentioned objects are
allowed), so an image of many random blobs can meet existence prompts by luck. Random image tokens decoded
by the shipped VQ are such clutter; a metric worth reporting must give them ~0 while keeping the trained
model's images and the VQ's reconstructions of real scenes. This measures all three on the same held-out
prompts, with the world's limit (at most `MAX_OBJECTS` objects in a scene) and with the limit lifted.

    python benchmarks/verifier_clutter.py [--n 500] [--seed 0]
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import machine, nonnegative_int, positive_int, run_main, write_result
from unigap.evaluate import generate_and_judge, held_out_pairs
from unigap.model import load_model
from unigap.world import detect, render, verify
from unigap.world import prompts as world_prompts

RESULT = Path(__file__).parent / "results" / "verifier_clutter.json"


@contextmanager
def object_limit_lifted():
    """The verifier as it was before the limit: `check` reads the module's MAX_OBJECTS at call time."""
    limit = world_prompts.MAX_OBJECTS
    world_prompts.MAX_OBJECTS = 10**9
    try:
        yield
    finally:
        world_prompts.MAX_OBJECTS = limit


def measure(name: str, images: list, specs: list) -> dict:
    counts = [len(detect(image)) for image in images]
    with_limit = [verify(image, spec).satisfied for image, spec in zip(images, specs, strict=True)]
    with object_limit_lifted():
        without = [verify(image, spec).satisfied for image, spec in zip(images, specs, strict=True)]
    return {
        "images": name,
        "n": len(images),
        "accuracy_with_limit": float(np.mean(with_limit)),
        "accuracy_without_limit": float(np.mean(without)),
        "mean_objects": float(np.mean(counts)),
        "share_over_limit": float(np.mean(np.array(counts) > world_prompts.MAX_OBJECTS)),
    }


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=500)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    um = load_model("tiny")
    pairs = held_out_pairs(args.n, args.seed)
    specs = [spec for spec, _ in pairs]
    generator = torch.Generator().manual_seed(args.seed)
    random_ids = torch.randint(um.codebook_size, (args.n, um.num_image_tokens), generator=generator)
    generated, _ = generate_and_judge(um, specs, args.seed, 32, 5.0, 1.0, progress=False)  # as `unigap eval`
    rows = [
        measure("random tokens", um.decode_tokens(random_ids), specs),
        measure("shipped tiny, generated (CFG 5, T 1)", generated, specs),
        measure("VQ reconstructions of the scenes", um.decode_tokens(um.encode_images([render(s) for _, s in pairs])),
                specs),
    ]
    table = Table("images", "accuracy, limit 4", "accuracy, no limit", "objects per image", "share > 4")
    for row in rows:
        table.add_row(row["images"], f"{row['accuracy_with_limit']:.3f}", f"{row['accuracy_without_limit']:.3f}",
                      f"{row['mean_objects']:.1f}", f"{row['share_over_limit']:.3f}")
    Console().print(table)
    write_result(RESULT, {"benchmark": "verifier_clutter", "n": args.n, "seed": args.seed, "runs": rows, **machine(um)})


if __name__ == "__main__":
    run_main(options(), main)
