"""The DPO defaults that `unigap train` (`TrainConfig`) and `unigap study` (`StudyConfig`) share, in one place.

Why a module of its own: both configs read these values, and the study's config must stay free of torch (so that
`unigap study --help` is fast), which `TrainConfig`'s module is not. The values are `unigap tune`'s choice on the
shipped model's validation split (the procedure and its table: docs/experiments.md); rerun it when the shipped
model changes and copy its `chosen` settings here (the chosen step is a checkpoint of a longer cosine schedule:
confirm it with a run of exactly that many steps, `unigap tune --steps N`, as was done for these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DPODefaults:
    steps: int
    lr: float
    beta: float
    nll_weight: float  # RPO's NLL term on the chosen sequence (0 = plain DPO)
    gen_kind: str  # the generation pairs the study builds: gen-real (rendered scene chosen) or gen-model (both sampled)


DPO_DEFAULTS = DPODefaults(steps=150, lr=3e-5, beta=0.1, nll_weight=0.0, gen_kind="gen-model")

# the grid `unigap tune` searches by default (pair kinds, learning rates, NLL weights, betas, CFG scales of the loss,
# pairs per step)
TUNE_GRID: dict[str, tuple] = {
    "kinds": ("gen-real", "gen-model"),
    "lrs": (1e-5, 3e-5, 1e-4),
    "nll_weights": (0.0, 1.0),
    "betas": (DPO_DEFAULTS.beta,),
    "cfg_scales": (0.0,),
    "pair_batches": (1,),
}

# the budget of each `unigap tune` run: DPO steps, validation evaluation every K steps on n prompts, pairs per kind
TUNE_RUN: dict[str, int] = {"steps": 300, "eval_every": 50, "n": 300, "gen_pairs": 128}

LN2 = math.log(2)  # a DPO loss at ln 2: the policy does not yet tell chosen from rejected
# a trained task's DPO loss (without the NLL term) this far below ln 2 while its chosen sequences became *less* likely
# than under the reference: over-optimisation (the rejected pushed down, the chosen not raised)
OVEROPTIMISED_LOSS = LN2 / 4
