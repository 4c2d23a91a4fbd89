"""Damage rule vs verifier: how often the verifier reads a damaged picture as the world's rule labels it.

Why: the judge learns to reject broken pictures from damaged renders (`unigap.world.damage`) labelled by a
rule (a malformed, cut or merged object is an object of no shape; two merged objects count as one; an extra
object counts like any other), never from the verifier. The rule is only worth teaching if the
independent judge sees the pictures the same way. For each damage kind this draws pictures of train-split
prompts and compares, per prompt (the one the scene was drawn for and three of its near misses), the
verifier's verdict with the rule's truth, and, per picture, the detected (shape, colour) multiset with the
rule's objects.

    python benchmarks/damage_agreement.py [--n 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import nonnegative_int, positive_int, run_main, write_result
from unigap.world import (
    DAMAGE_KINDS,
    damage_scene,
    detect,
    near_misses,
    render_damaged,
    rule_objects,
    rule_satisfies,
    sample_scene_for,
    sample_spec,
    verify,
)

RESULT = Path(__file__).parent / "results" / "damage_agreement.json"


def measure(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    prompts, prompts_agree, pictures, pictures_agree = Counter(), Counter(), Counter(), Counter()
    drawn = 0
    while drawn < n:
        kind = DAMAGE_KINDS[drawn % len(DAMAGE_KINDS)]
        spec = sample_spec(rng)
        damaged = damage_scene(sample_scene_for(spec, rng), rng, kind)
        if damaged is None:
            continue
        drawn += 1
        label = f"{kind}:{damaged.detail}" if damaged.detail else kind
        image = render_damaged(damaged)
        for prompt in (spec, *near_misses(spec)[:3]):
            prompts[label] += 1
            prompts_agree[label] += verify(image, prompt).satisfied == rule_satisfies(damaged, prompt)
        seen = sorted((o.shape, o.color) for o in detect(image))
        pictures[label] += 1
        pictures_agree[label] += seen == sorted((o.shape, o.color) for o in rule_objects(damaged))
    rows = [
        {"damage": label, "pictures": pictures[label], "objects_agree": pictures_agree[label] / pictures[label],
         "prompts": prompts[label], "verdicts_agree": prompts_agree[label] / prompts[label]}
        for label in sorted(pictures)
    ]
    overall = {"pictures": sum(pictures.values()),
               "objects_agree": sum(pictures_agree.values()) / sum(pictures.values()),
               "prompts": sum(prompts.values()), "verdicts_agree": sum(prompts_agree.values()) / sum(prompts.values())}
    return {"n": n, "seed": seed, "overall": overall, "by_damage": rows}


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=2000, help="damaged pictures (kinds in turn)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    result = measure(args.n, args.seed)
    table = Table(title=f"verifier vs damage rule (n = {args.n} pictures, seed {args.seed})")
    for column in ("damage", "pictures", "objects agree", "prompts", "verdicts agree"):
        table.add_column(column, justify="left" if column == "damage" else "right")
    for row in [*result["by_damage"], {"damage": "all", **result["overall"]}]:
        table.add_row(row["damage"], str(row["pictures"]), f"{row['objects_agree']:.3f}", str(row["prompts"]),
                      f"{row['verdicts_agree']:.3f}")
    Console().print(table)
    write_result(args.out, result)


if __name__ == "__main__":
    run_main(options(), main)
