"""`UniMRGConfig`: every knob of an understanding-SFT run with or without UniMRG's auxiliary representation
generation (SPEC §4, arXiv 2601.21406), loadable from TOML.

Kept apart from the trainer (as `TrainConfig` is from `DPOTrainer`) so a bad value fails before a slow model load,
the settings are saved next to the adapter, and a resumed run can refuse different settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unigap.errors import UserError
from unigap.train.config import load_config

OBJECTIVES = ("unimrg", "und-sft")  # und-sft: the same understanding data and steps, no auxiliary task
REPRESENTATIONS = ("reconstruction", "segmentation", "depth")  # what the auxiliary tasks generate, in this order


@dataclass(frozen=True)
class UniMRGConfig:
    """One run. Optimiser settings are UniMRG's (AdamW betas (0.9, 0.95), weight decay 0.02, 1% warm-up then cosine,
    grad-clip 1.0, one batch per task per step, every auxiliary weight 1.0) except the learning rate: UniMRG
    fine-tunes the whole model at 1e-5; unigap trains a LoRA, which needs a larger one (`docs/experiments.md`)."""

    objective: str = "unimrg"
    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8  # images per task per step (UniMRG: 16)
    questions_per_image: int = 2  # understanding questions per image (they share its forward pass)
    sentence_fraction: float = 0.5  # share of questions asking for a full-sentence answer (both answer forms)
    n_scenes: int = 2000  # random train-split scenes the data is drawn from (the same for every seed)
    reconstruction_weight: float = 1.0
    segmentation_weight: float = 1.0
    depth_weight: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.02
    warmup_ratio: float = 0.01
    max_grad_norm: float = 1.0
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.05
    seed: int = 0  # LoRA init, batch order, dropout
    data_seed: int = 0  # the train/val/test partition (the model's pretraining seed)
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        for name in ("steps", "lr", "batch_size", "questions_per_image", "n_scenes", "lora_rank", "lora_alpha",
                     "max_grad_norm", "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in (*(f"{r}_weight" for r in REPRESENTATIONS), "weight_decay", "seed", "data_seed"):
            if not getattr(self, name) >= 0:
                raise UserError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.sentence_fraction <= 1:
            raise UserError(f"sentence-fraction must lie in [0, 1], got {self.sentence_fraction}")
        for name in ("warmup_ratio", "adam_beta1", "adam_beta2", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)}")
        if self.objective == "unimrg" and not self.auxiliary:
            raise UserError("objective unimrg needs at least one auxiliary weight > 0 (und-sft trains none)")

    @property
    def auxiliary(self) -> dict[str, float]:
        """The auxiliary tasks this run trains and their loss weights (none for und-sft)."""
        if self.objective == "und-sft":
            return {}
        weights = {r: float(getattr(self, f"{r}_weight")) for r in REPRESENTATIONS}
        return {r: w for r, w in weights.items() if w > 0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> UniMRGConfig:
        """Defaults, then the TOML file's keys (named like the fields), then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)
