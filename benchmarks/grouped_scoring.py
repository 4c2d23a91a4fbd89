"""Grouped answer scoring: one padded block of question + answer rows against up to 3 length buckets.

Why: pretraining scores several questions per image after one shared image pass. The rows after the image
are left-padded to the longest, and a full-sentence description (~30 tokens) among one-word answers
(~10 tokens with their question) made most of that block padding. This times a forward + backward of
`grouped_answer_logprobs` on pretraining batches (the full preset's images × questions per image, drawn
from the real corpus), both ways side by side on the CPU, and checks the scores agree.

    python benchmarks/grouped_scoring.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from _common import machine, positive_int, run_main, write_result
from unigap.model import load_model
from unigap.model.understanding import grouped_answer_logprobs
from unigap.pretrain import FULL
from unigap.pretrain.corpus import understanding_corpus

RESULT = Path(__file__).parent / "results" / "grouped_scoring.json"


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = options().parse_args(argv)
    um = load_model("tiny", device="cpu")  # float32 on the CPU (the timing does not synchronise a GPU)
    um.model.train()
    corpus = understanding_corpus(400, seed=0, questions_per_scene=FULL.questions_per_scene)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        rows = rng.integers(len(corpus), size=FULL.und_batch)
        questions = [corpus.questions[r][: FULL.questions_per_image] for r in rows]
        batches.append(([corpus.renders[r] for r in rows], [[q.text for q in qs] for qs in questions],
                        [[q.answer for q in qs] for qs in questions]))
    seconds: dict[int, list[float]] = {1: [], 3: []}
    for index, batch in enumerate(batches):
        totals = {}
        for buckets in (1, 3):  # alternate, so machine noise hits both alike
            started = time.perf_counter()
            total, _ = grouped_answer_logprobs(um.model, um.prompts, um.vision, *batch, max_buckets=buckets)
            total.sum().backward()
            if index:
                seconds[buckets].append(time.perf_counter() - started)
            totals[buckets] = total.detach()
        assert torch.allclose(totals[1], totals[3], atol=1e-4), "bucketing changed the scores"
    one, three = statistics.median(seconds[1]), statistics.median(seconds[3])
    table = Table("rows per step", "1 block (s)", "3 buckets (s)", "speed-up")
    table.add_row(f"{FULL.und_batch} images × {FULL.questions_per_image}", f"{one:.3f}", f"{three:.3f}",
                  f"{one / three:.2f}×")
    Console().print(table)
    write_result(RESULT, {"benchmark": "grouped_scoring", "images": FULL.und_batch,
                          "questions_per_image": FULL.questions_per_image, "repeats": args.repeats,
                          "seconds_one_block": one, "seconds_three_buckets": three, "speedup": one / three,
                          "scores_equal": True, **machine(um)})


if __name__ == "__main__":
    run_main(options(), main)
