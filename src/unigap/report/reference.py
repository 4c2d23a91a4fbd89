"""The published numbers (SPEC §1, arXiv 2603.17044) the report prints beside ours.

Their scales differ from ours (VQA score and CLIPScore on Janus-Pro vs exact accuracies on ShapeWorld), so
the report shows them side by side for direction and significance, never subtracts one from the other.
"""

from __future__ import annotations

# Janus-Pro-7B headline: Δ vs base (VQA 2.49 / CLIPScore 26.87), with the p-values SPEC quotes
PAPER_BASE = {"vqa": 2.49, "clip": 26.87}
PAPER_HEADLINE: dict[str, dict[str, float | None]] = {
    "und-only": {"vqa": 0.26, "vqa_p": 0.005, "clip": -0.05, "clip_p": None},
    "gen-only": {"vqa": 0.01, "vqa_p": None, "clip": -0.13, "clip_p": None},
    "joint": {"vqa": -0.01, "vqa_p": None, "clip": 0.06, "clip_p": None},
    "pcgrad": {"vqa": 0.02, "vqa_p": None, "clip": -0.15, "clip_p": None},
    "grad-weighted": {"vqa": 0.01, "vqa_p": None, "clip": 0.15, "clip_p": 0.61},
    "length-norm": {"vqa": 0.04, "vqa_p": None, "clip": -0.18, "clip_p": None},
    "fixed": {"vqa": 0.03, "vqa_p": None, "clip": -0.13, "clip_p": None},
}
PAPER_BONFERRONI = {"methods": 9, "metrics": 3, "alpha_corrected": 0.0019}

# base-model gradient diagnostics; the intra-task calibration cosines are quoted without a model size (7B row)
PAPER_GRADIENTS: dict[str, dict[str, float | None]] = {
    "Janus-Pro-7B": {"cos": -0.0001, "ratio": 0.073, "und_cos": 0.0405, "gen_cos": 0.0063, "ratio_cv": 0.5},
    "Janus-Pro-1B": {"cos": -0.003, "ratio": 0.093, "und_cos": None, "gen_cos": None, "ratio_cv": None},
}

# final per-task DPO loss of the single-task runs and their KL to the reference (nats per sequence)
PAPER_FINAL: dict[str, dict[str, float]] = {
    "und-only": {"und_loss": 0.219, "und_kl": 3.84},
    "gen-only": {"gen_loss": 0.691, "gen_kl": 0.041},
}
