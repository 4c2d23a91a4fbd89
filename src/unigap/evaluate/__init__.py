"""Evaluation: understanding accuracy, generation accuracy, and the gap between them (SPEC §2).

`evaluate(um, n, seed)` runs everything on held-out ShapeWorld data and returns metric objects
(`{value, n, stderr}` with per-kind / per-category breakdowns) plus per-item records.
Its names are imported on first use, so the torch-free parts (`stats`, `report`) load without the model.
"""

from unigap.registry import lazy_attributes

__getattr__, __all__ = lazy_attributes(__name__, {
    "unigap.evaluate.data": ("held_out_pairs",),
    "unigap.evaluate.generation": ("batch_seed", "generate_and_judge", "generation_metrics"),
    "unigap.evaluate.report": ("check_output_file", "save_report", "summary_table", "write_atomically"),
    "unigap.evaluate.run": ("evaluate",),
    "unigap.evaluate.stats": ("summarize", "summarize_by", "summarize_grouped"),
    "unigap.evaluate.understanding": ("UnderstandingItem", "answer_items", "normalize_answer", "understanding_items",
                                      "understanding_metrics"),
    "unigap.evaluate.vq": ("vq_fidelity",),
})
