"""The full diagnostic study (`unigap study`): base evaluation, preference data, gradient diagnostics, every
strategy and post-hoc method per seed, their evaluation, and the statistical report.
Its names are imported on first use, so the torch-free parts (`results`, `config`) load without the model."""

from unigap.registry import lazy_attributes

__getattr__, __all__ = lazy_attributes(__name__, {
    "unigap.study.config": ("FULL", "QUICK", "StudyConfig"),
    "unigap.study.run": ("Job", "StudyRunner", "claim", "run_study"),
})
