"""Self-improvement (SPEC §2, arXiv 2507.16663): the model judges its own images and learns from its verdicts, with
curriculum replay of the discard pool and an audit guard against co-degradation. `unigap selfimprove` calls `run`."""

from unigap.selfimprove.config import LABELS, METHODS, TRAINABLE, SelfImproveConfig
from unigap.selfimprove.run import GuardStopped, run

__all__ = ["LABELS", "METHODS", "TRAINABLE", "GuardStopped", "SelfImproveConfig", "run"]
