"""The full diagnostic study (`unigap study`): base evaluation, preference data, gradient diagnostics, every
strategy and post-hoc method per seed, their evaluation, and the statistical report."""

from unigap.study.config import FULL, QUICK, StudyConfig
from unigap.study.run import Job, StudyRunner, claim, run_study

__all__ = ["FULL", "QUICK", "Job", "StudyConfig", "StudyRunner", "claim", "run_study"]
