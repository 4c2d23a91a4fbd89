"""Evaluation: understanding accuracy, generation accuracy, and the gap between them (SPEC §2).

`evaluate(um, n, seed)` runs everything on held-out ShapeWorld data and returns metric objects
(`{value, n, stderr}` with per-kind / per-category breakdowns) plus per-item records.
"""

from unigap.evaluate.data import held_out_pairs
from unigap.evaluate.generation import (
    batch_seed,
    generate_and_judge,
    generation_metrics,
)
from unigap.evaluate.report import (
    check_output_file,
    save_report,
    summary_table,
    write_atomically,
)
from unigap.evaluate.run import evaluate
from unigap.evaluate.stats import summarize, summarize_by, summarize_grouped
from unigap.evaluate.understanding import (
    UnderstandingItem,
    answer_items,
    normalize_answer,
    understanding_items,
    understanding_metrics,
)
from unigap.evaluate.vq import vq_fidelity

__all__ = [
    "vq_fidelity",
    "UnderstandingItem",
    "answer_items",
    "batch_seed",
    "check_output_file",
    "evaluate",
    "generate_and_judge",
    "generation_metrics",
    "held_out_pairs",
    "normalize_answer",
    "save_report",
    "summarize",
    "summarize_by",
    "summarize_grouped",
    "summary_table",
    "understanding_items",
    "understanding_metrics",
    "write_atomically",
]
