"""What `unigap study` runs: one dataclass, two presets (full and `--quick`).

Why a saved config: a study is resumed by running the same command again, and finished runs are only
reusable under the settings that produced them, so the study directory keeps its `study.json` and a rerun
under different settings is refused instead of silently mixing results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from unigap.atomic import path_setting
from unigap.errors import UserError
from unigap.arms import ARMS, select
from unigap.model.loading import EMBEDDED
from unigap.prefs.kinds import GEN_KINDS
from unigap.train.config import check_field_types, check_ranges
from unigap.train.defaults import DPO_DEFAULTS


def used_by(default: Any, *families: str) -> Any:
    """A budget setting only the arms of `families` read: a study folder with none of them may take it afresh."""
    return field(default=default, metadata={"families": families})


@dataclass(frozen=True)
class StudyConfig:
    """A study: the model, the seeds, the data and training budgets, the evaluation size."""

    model: str = field(default="tiny", metadata=path_setting(EMBEDDED))
    seeds: int = 3
    n: int = 200  # evaluation items (questions and prompts) per model and seed
    data_seed: int = 0  # train/test partition: the model's pretraining seed
    und_pairs: int = 256
    gen_pairs: int = 128
    gen_kind: str = DPO_DEFAULTS.gen_kind
    und_fallback_gt: bool = False  # und pairs: the ground truth as chosen when both samples tie (weak models)
    diagnose_pairs: int = 200
    sweep_probes: int = 16
    methods: tuple[str, ...] = field(default_factory=lambda: select(None))  # the arms (`unigap.arms`); default: the
    # default arms, those registered when the config is made (a user's script registers its own first)
    steps: int = DPO_DEFAULTS.steps  # the DPO arms' settings: `unigap train`'s defaults unless changed here
    lr: float = DPO_DEFAULTS.lr
    beta: float = DPO_DEFAULTS.beta
    nll_weight: float = DPO_DEFAULTS.nll_weight
    batch_size: int = 32
    # the other families' budgets, each free to change in a folder with no arm that reads it
    self_prompts: int = used_by(150, "p2")  # self-improvement arms: training prompts (10 images each) and epochs
    self_epochs: int = used_by(2, "p2")
    refine_rounds: int = used_by(3, "p3")  # reflect-refine arms: rounds after the first image (best-of-n: 1 + rounds)
    grpo_steps: int = used_by(200, "p3")  # refine-grpo arm: GRPO steps (the rest: GRPOConfig's defaults)
    grpo_micro_batch_size: int | None = None  # and its `micro_batch_size` (a Janus-Pro-1B needs one; only rounding)
    # SFT arms (unimrg, und-sft, sft): optimiser steps, and the train scenes their data is drawn from (UniMRGConfig's
    # and SFTConfig's defaults; their other settings as they are)
    unimrg_steps: int = used_by(300, "p2", "p4")
    unimrg_scenes: int = used_by(2000, "p2", "p4")

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.seeds < 2:
            raise UserError(f"--seeds must be at least 2 (the interval over seed means needs two), got {self.seeds}")
        check_ranges(self, positive=("n", "und_pairs", "gen_pairs", "steps", "batch_size", "grpo_steps", "unimrg_steps",
                                     "unimrg_scenes", "self_prompts", "self_epochs"),
                     non_negative=("data_seed", "sweep_probes", "refine_rounds"))  # (0 probes: no sweep)
        if self.grpo_micro_batch_size is not None and not self.grpo_micro_batch_size > 0:
            raise UserError(f"grpo_micro_batch_size must be positive (or None: whole groups), got "
                            f"{self.grpo_micro_batch_size}")
        if self.n < 2:  # (the paired test against the base, on every arm, needs two items)
            raise UserError(f"--n must be at least 2 (the paired test against the base needs two items), got {self.n}")
        if self.diagnose_pairs < 4:
            raise UserError(f"diagnose_pairs must be at least 4, got {self.diagnose_pairs}")
        if not (self.lr > 0 and self.beta > 0 and self.nll_weight >= 0):
            raise UserError(f"lr and beta must be positive and nll_weight >= 0, got {self.lr}, {self.beta} and "
                            f"{self.nll_weight}")
        if self.gen_kind not in GEN_KINDS:
            raise UserError(f"gen_kind must be {' or '.join(GEN_KINDS)}, got {self.gen_kind!r}")
        if not self.methods:
            raise UserError("methods selects no arm")
        for method in self.methods:
            baseline = ARMS.lookup(method).baseline
            if baseline is not None and baseline not in ARMS:  # (the report compared nothing, and said nothing)
                raise ARMS.unknown(baseline, label=f"baseline of arm {method!r}: arm")
        missing = sorted({r for m in self.methods for r in ARMS[m].requires} - set(self.methods))
        if missing:
            raise UserError(f"the selected arms need {', '.join(missing)} too")

    def methods_in_order(self) -> list[str]:
        """Every arm of the study besides the base, in report order: the chosen arms, and every post-hoc arm whose
        requirements they meet (soups and the oracle run whenever und-only and gen-only do)."""
        chosen = set(self.methods)
        return [name for name, arm in ARMS.items()
                if name in chosen or (arm.kind == "post-hoc" and arm.requires and set(arm.requires) <= chosen)]

    @staticmethod
    def families_using() -> dict[str, tuple[str, ...]]:
        """Each `used_by` setting and the families of arms that read it."""
        return {f.name: f.metadata["families"] for f in fields(StudyConfig) if "families" in f.metadata}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"methods": list(self.methods)}

    def scaled(self, **changes: Any) -> StudyConfig:
        """A copy with the given fields changed (None values are left alone: unset flags)."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


FULL = StudyConfig()
QUICK = FULL.scaled(  # every arm of every family, each at its smallest
    methods=tuple(ARMS), seeds=2, n=24, und_pairs=16, gen_pairs=8, diagnose_pairs=8, sweep_probes=2, steps=6, batch_size=24,
    self_prompts=8, self_epochs=2, refine_rounds=1, grpo_steps=2, unimrg_steps=6, unimrg_scenes=16,
)
