"""The self-judge asked in parts: is the one yes/no question the weak link, or the model's reading of its images?

Why: the judge question ("Does this image show {prompt}?") is one answer token about the whole prompt. The same
model answers single questions about held-out scenes correctly ~70% of the time, so a judge built from its answers
to the prompt's parts (TIFA-style: "Is there a red circle?" per item, "How many red circles are there?" for
counting prompts, "Is the red circle to the left of the blue square?" for positions) might rank its own images
better. Score = the smallest log-probability of an expected answer; accept when that answer is more likely than
not. Measured on the same generations `unigap eval` judges (same prompts, seed and batch size).

A third score asks the generation side instead of the understanding side: by Bayes' rule with a uniform prior,
the posterior of the prompt among itself and up to 8 of its near misses, from the generation head's conditional
likelihood of the image's (VQ-encoded) tokens under each; accept when the prompt is more likely than the rest.

    python benchmarks/decomposed_judge.py --model tiny [--split test --n 500 --seed 7]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import nonnegative_int, positive_int, run_main, write_result
from unigap.evaluate.critique import self_judge_metrics
from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.generation import generate_and_judge
from unigap.model import UnifiedModel, load_model
from unigap.world import CATEGORIES, PromptSpec, near_misses
from unigap.world.prompts import NUMBER_WORDS, RELATION_PHRASES, article, plural
from unigap.world.questions import TEMPLATES

RESULT = Path(__file__).parent / "results" / "decomposed_judge.json"
BATCH = 32  # `unigap eval`'s default, so the generations are eval's


def parts(spec: PromptSpec) -> list[tuple[str, str]]:
    """(question, the answer the prompt implies) for each part of a ShapeWorld prompt."""
    asked = []
    for item in spec.items:
        if spec.category == "counting":
            template = "count_both" if item.color else "count_shape"
            asked.append((TEMPLATES[template].format(color=item.color, shapes=plural(item.shape)),
                          NUMBER_WORDS[item.count]))
        else:
            template = "exists_both" if item.color else "exists_shape"
            asked.append((TEMPLATES[template].format(a=article(item.noun), color=item.color, shape=item.shape), "yes"))
    if spec.category == "position" and all(item.color for item in spec.items):
        a, b = spec.items
        asked.append((TEMPLATES["position"].format(color=a.color, shape=a.shape,
                                                   relation=RELATION_PHRASES[spec.relation],
                                                   color2=b.color, shape2=b.shape), "yes"))
    return asked


@torch.no_grad()
def parts_scores(um: UnifiedModel, specs: list[PromptSpec], images: list) -> list[float]:
    """The smallest log-probability of an expected part answer, per image."""
    scores = []
    for start in range(0, len(specs), BATCH):
        asked = [parts(spec) for spec in specs[start : start + BATCH]]
        logps, _ = um.grouped_answer_logprobs(images[start : start + BATCH], [[q for q, _ in a] for a in asked],
                                              [[ans for _, ans in a] for a in asked])
        flat = iter(logps.float().tolist())
        scores += [min(next(flat) for _ in a) for a in asked]
    return scores


@torch.no_grad()
def likelihood_scores(um: UnifiedModel, specs: list[PromptSpec], images: list, most: int = 8) -> list[float]:
    """log P(prompt | image) among the prompt and up to `most` of its near misses (seeded choice), uniform prior,
    from log p(image tokens | text) under the generation head."""
    rng = np.random.default_rng(0)
    tokens = torch.cat([um.encode_images(images[start : start + BATCH]) for start in range(0, len(images), BATCH)])
    scores = []
    for spec, row in zip(specs, tokens, strict=True):
        rivals = near_misses(spec)
        if len(rivals) > most:
            rivals = [rivals[i] for i in rng.choice(len(rivals), most, replace=False)]
        texts = [spec.text, *(rival.text for rival in rivals)]
        logp = um.image_token_logprobs(texts, row.expand(len(texts), -1)).sum(dim=-1).double()
        scores.append(float(logp[0] - torch.logsumexp(logp, dim=0)))
    return scores


def judged(scores: list[float], threshold: float, records: list[dict]) -> dict:
    """`unigap eval`'s self-judge metrics (`self_judge_metrics`) for any score in place of P(yes), accepting at
    `threshold`: the AUC within categories, per-category AUCs, and the precision of the accepted images."""
    metrics = self_judge_metrics([{**r, "p_yes": s, "self_accepted": s >= threshold}
                                  for s, r in zip(scores, records, strict=True)])
    accepted = metrics["precision"]
    return {"auc_within": metrics["auc_within"]["auc"], "pairs": metrics["auc_within"]["pairs"],
            "auc_by_category": {c: m["auc"] for c, m in metrics["auc_by_category"].items()},
            "precision": accepted["precision"], "n": accepted["n"], "accept_rate": accepted["n"] / len(records)}


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--n", type=positive_int, default=500)
    parser.add_argument("--seed", type=nonnegative_int, default=7)
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    um = load_model(args.model)
    specs = [spec for spec, _ in held_out_pairs(args.n, args.seed, 0, split=args.split)]
    with torch.no_grad():
        images, records = generate_and_judge(um, specs, args.seed, BATCH, 5.0, 1.0, True)
    judge = [r["p_yes"] for r in records]
    split_up = parts_scores(um, specs, images)
    combined = [math.log(max(p, 1e-9)) + s for p, s in zip(judge, split_up, strict=True)]
    results = {
        "judge question": judged(judge, 0.5, records),
        "parts (smallest answer log-prob)": judged(split_up, math.log(0.5), records),
        "judge question + parts": judged(combined, math.log(0.25), records),
        "generation likelihood among near misses": judged(likelihood_scores(um, specs, images), math.log(0.5), records),
    }
    table = Table(title=f"self-judge on its own {args.split} generations (n = {args.n}, seed {args.seed})")
    for column in ("score", "AUC within categories", "precision", "accepted", *CATEGORIES):
        table.add_column(column)
    for name, row in results.items():
        cells = [f"{v:.3f}" if v is not None else "—"
                 for v in (row["auc_within"], row["precision"], row["accept_rate"])]
        table.add_row(name, *cells, *(f"{row['auc_by_category'][c]:.2f}" if row["auc_by_category"][c] is not None
                                      else "—" for c in CATEGORIES))
    Console(width=200).print(table)
    write_result(args.out, {"model": args.model, "split": args.split, "n": args.n, "seed": args.seed,
                            "generation_accuracy": sum(r["verified"] for r in records) / len(records),
                            "results": results})


if __name__ == "__main__":
    run_main(options(), main)
