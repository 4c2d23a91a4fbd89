"""Held-out prompts whose same-meaning twin is a train prompt, and whether the shipped model generates them better.

The splits hash prompt texts one by one, but a two-item prompt has a twin of the same meaning: "a red circle and a
blue square" / "a blue square and a red circle", "A to the left of B" / "B to the right of A". This counts, per
category, the held-out (val and test) prompts whose twin is in train, and splits an eval report's generation
records (default: the shipped model's, `unigap eval --model tiny --n 500 --seed 7 --out docs/results/tiny_eval.json`)
by it, with Welch's test within each category.

    python docs/split_twins.py [--report docs/results/tiny_eval.json] [--out twins.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from scipy import stats

from unigap.atomic import write_json
from unigap.world import PromptSpec, parse_prompt, split_prompts

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
TWO_ITEMS = ("two_objects", "color_attribution", "position")


def twin(spec: PromptSpec) -> PromptSpec:
    """The same meaning with the items the other way round (and the relation turned for position)."""
    a, b = spec.items
    return PromptSpec(spec.category, (b, a), OPPOSITE[spec.relation] if spec.relation else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path(__file__).parent / "results" / "tiny_eval.json")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    seed = report["config"]["data_seed"]
    where = {s.text: split for split in ("train", "val", "test") for s in split_prompts(split, seed)}
    leaks = {}
    for category in TWO_ITEMS:
        held = [s for split in ("val", "test") for s in split_prompts(split, seed, category)]
        leaks[category] = {"held_out": len(held), "twin_in_train": sum(where[twin(s).text] == "train" for s in held)}
    outcomes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in report["records"]["generation"]:
        spec = parse_prompt(record["prompt"])
        if spec.category in TWO_ITEMS and record["verified"] is not None:
            group = "twin_in_train" if where[twin(spec).text] == "train" else "twin_held_out"
            outcomes[spec.category][group].append(float(record["verified"]))
    result = {"data_seed": seed, "report": str(args.report), "prompts": leaks, "accuracy": {}}
    for category in TWO_ITEMS:
        groups = outcomes[category]
        row = {group: {"n": len(v), "accuracy": sum(v) / len(v) if v else None} for group, v in groups.items()}
        a, b = groups.get("twin_in_train", []), groups.get("twin_held_out", [])
        row["welch_p"] = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 and len(b) > 1 else None
        result["accuracy"][category] = row
        print(f"{category}: {leaks[category]['twin_in_train']} of {leaks[category]['held_out']} held-out prompts "
              f"have their twin in train; generation accuracy " + ", ".join(
                  f"{group} {r['accuracy']:.3f} (n = {r['n']})" for group, r in sorted(row.items())
                  if group != "welch_p") + (f"; Welch p {row['welch_p']:.2g}" if row["welch_p"] is not None else ""))
    if args.out is not None:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
