"""The full diagnostic study (`unigap study`): base evaluation, preference data, gradient diagnostics, every
strategy and post-hoc method per seed, their evaluation, and the statistical report.
Its names are imported on first use, so the torch-free parts (`results`, `config`) load without the model."""

from unigap.registry import lazy_attributes

_TARGETS = {
    "FULL": "unigap.study.config:FULL",
    "QUICK": "unigap.study.config:QUICK",
    "StudyConfig": "unigap.study.config:StudyConfig",
    "Job": "unigap.study.run:Job",
    "StudyRunner": "unigap.study.run:StudyRunner",
    "claim": "unigap.study.run:claim",
    "run_study": "unigap.study.run:run_study",
}
__getattr__ = lazy_attributes(__name__, _TARGETS)
__all__ = list(_TARGETS)
