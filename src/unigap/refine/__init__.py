"""Reason → reflect → refine (R3, arXiv 2602.15772) at inference: the loop, its per-round metrics, the oracle
reflector and the best-of-N baseline. `unigap refine` calls `run_refine`."""

from unigap.refine.loop import REFINERS, REFLECTORS, Trajectory, run_loop
from unigap.refine.run import RefineConfig, run_refine

__all__ = ["REFINERS", "REFLECTORS", "RefineConfig", "Trajectory", "run_loop", "run_refine"]
