"""The self-judge on rendered pictures: does it tell intact, broken and damaged pictures of a prompt apart?

Why: a judge that fails on its own generated images may fail because those images look unlike anything it was
trained on, or because it never learned to judge at all. Rendered pictures of the kinds pretraining shows it
(intact, broken by one edit, damaged, every object warped) separate the two: measured on train prompts (new
scenes) and on val prompts (prompt texts it never saw in a judge question).

    python benchmarks/judge_renders.py --model tiny [--n 400] [--seed 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import nonnegative_int, positive_int, run_main, write_result
from unigap.evaluate.critique import auc
from unigap.model import load_model
from unigap.world import CATEGORIES, break_scene, check, damage_scene, render, sample_records, warp_scene
from unigap.world.edits import things

RESULT = Path(__file__).parent / "results" / "judge_renders.json"
PICTURES = ("intact", "broken", "damaged", "warped")


def pictures(split: str, n: int, seed: int) -> list[dict]:
    """n pictures of `split` prompts, the kinds in turn, with the prompt's truth for each."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for spec, scene in sample_records(n, 0, split, draw_seed=seed):
        kind = PICTURES[len(out) % len(PICTURES)]
        image, objects = render(scene), things(scene.objects)
        if kind == "broken":
            broken, _ = break_scene(scene, spec, rng)
            image, objects = render(broken), things(broken.objects)
        elif kind in ("damaged", "warped"):
            drawn = None
            for _ in range(20):
                drawn = damage_scene(scene, rng) if kind == "damaged" else warp_scene(scene, rng)
                if drawn is not None:
                    break
            if drawn is not None:
                image, objects = drawn.image, drawn.objects
        out.append({"category": spec.category, "kind": kind, "image": image, "prompt": spec.text,
                    "truth": check(objects, spec, scene.geometry.margin)[0]})
    return out


def measure(model: str, n: int, seed: int) -> dict:
    um = load_model(model)
    result = {"model": model, "n": n, "seed": seed, "splits": {}}
    for split in ("train", "val"):
        items = pictures(split, n, seed)
        p_yes = []
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            p_yes += um.judge([it["image"] for it in chunk], [it["prompt"] for it in chunk]).tolist()
        accurate = [(p >= 0.5) == it["truth"] for it, p in zip(items, p_yes, strict=True)]
        by_category = {}
        for category in CATEGORIES:
            rows = [(it, p) for it, p in zip(items, p_yes, strict=True) if it["category"] == category]
            by_category[category] = auc([p for it, p in rows if it["truth"]], [p for it, p in rows if not it["truth"]])
        result["splits"][split] = {"accuracy": float(np.mean(accurate)),
                                   "yes_rate": float(np.mean([it["truth"] for it in items])),
                                   "auc_by_category": by_category}
    return result


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=positive_int, default=400)
    parser.add_argument("--seed", type=nonnegative_int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    result = measure(args.model, args.n, args.seed)
    table = Table(title=f"self-judge on rendered pictures ({args.model}, n = {args.n} per split)")
    table.add_column("split")
    table.add_column("accuracy at 0.5", justify="right")
    for category in CATEGORIES:
        table.add_column(category.replace("_", " "), justify="right")
    for split, row in result["splits"].items():
        aucs = [row["auc_by_category"][c]["auc"] for c in CATEGORIES]
        table.add_row(split, f"{row['accuracy']:.3f}", *("—" if a is None else f"{a:.3f}" for a in aucs))
    Console().print(table)
    write_result(args.out, result)


if __name__ == "__main__":
    run_main(options(), main)
