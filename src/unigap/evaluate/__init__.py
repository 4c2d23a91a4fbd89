"""Evaluation: understanding accuracy, generation accuracy, and the gap between them (SPEC §2).

`evaluate(um, n, seed)` runs everything on held-out ShapeWorld data and returns metric objects
(`{value, n, stderr}` with per-kind / per-category breakdowns) plus per-item records.
Its names are imported on first use, so the torch-free parts (`stats`, `report`) load without the model.
"""

from unigap.registry import lazy_attributes

_TARGETS = {
    "held_out_pairs": "unigap.evaluate.data:held_out_pairs",
    "batch_seed": "unigap.evaluate.generation:batch_seed",
    "generate_and_judge": "unigap.evaluate.generation:generate_and_judge",
    "generation_metrics": "unigap.evaluate.generation:generation_metrics",
    "check_output_file": "unigap.evaluate.report:check_output_file",
    "save_report": "unigap.evaluate.report:save_report",
    "summary_table": "unigap.evaluate.report:summary_table",
    "write_atomically": "unigap.evaluate.report:write_atomically",
    "evaluate": "unigap.evaluate.run:evaluate",
    "summarize": "unigap.evaluate.stats:summarize",
    "summarize_by": "unigap.evaluate.stats:summarize_by",
    "summarize_grouped": "unigap.evaluate.stats:summarize_grouped",
    "UnderstandingItem": "unigap.evaluate.understanding:UnderstandingItem",
    "answer_items": "unigap.evaluate.understanding:answer_items",
    "normalize_answer": "unigap.evaluate.understanding:normalize_answer",
    "understanding_items": "unigap.evaluate.understanding:understanding_items",
    "understanding_metrics": "unigap.evaluate.understanding:understanding_metrics",
    "vq_fidelity": "unigap.evaluate.vq:vq_fidelity",
}
__getattr__ = lazy_attributes(__name__, _TARGETS)
__all__ = list(_TARGETS)
