"""`UniMRGConfig`: every knob of an understanding-SFT run with or without UniMRG's auxiliary representation
generation (SPEC §4, arXiv 2601.21406), loadable from TOML.

Kept apart from the trainer (as `TrainConfig` is from `DPOTrainer`) so a bad value fails before a slow model load,
the settings are saved next to the adapter, and a resumed run can refuse different settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unigap.errors import UserError
from unigap.train.config import check_field, check_ranges, load_config
from unigap.train.sft import SFTOptions

OBJECTIVES = ("unimrg", "und-sft")  # und-sft: the same understanding data and steps, no auxiliary task
REPRESENTATIONS = ("reconstruction", "segmentation", "depth")  # what the auxiliary tasks generate, in this order


@dataclass(frozen=True)
class UniMRGConfig(SFTOptions):
    """One run: `SFTOptions` (UniMRG's optimiser settings), the objective, and the ShapeWorld data it trains on."""

    objective: str = "unimrg"
    questions_per_image: int = 2  # understanding questions per image (they share its forward pass)
    sentence_fraction: float = 0.5  # share of questions asking for a full-sentence answer (both answer forms)
    n_scenes: int = 2000  # random train-split scenes the data is drawn from (the same for every seed)
    reconstruction_weight: float = 1.0
    segmentation_weight: float = 1.0
    depth_weight: float = 1.0
    data_seed: int = 0  # the train/val/test partition (the model's pretraining seed)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        check_ranges(self, positive=("questions_per_image", "n_scenes"),
                     non_negative=(*(f"{r}_weight" for r in REPRESENTATIONS), "data_seed"))
        check_field(self, "sentence_fraction", 0 <= self.sentence_fraction <= 1, "lie in [0, 1]")
        # an auxiliary map is a function of its input image: trained without it, it would teach nothing
        check_field(self, "prompt_dropout", self.prompt_dropout == 0, "be 0 for UniMRG (each map depends on its image)")
        if self.objective == "unimrg" and not self.auxiliary:
            raise UserError("objective unimrg needs at least one auxiliary weight > 0 (und-sft trains none)")

    @property
    def auxiliary(self) -> dict[str, float]:
        """The auxiliary tasks this run trains and their loss weights (none for und-sft)."""
        if self.objective == "und-sft":
            return {}
        weights = {r: float(getattr(self, f"{r}_weight")) for r in REPRESENTATIONS}
        return {r: w for r, w in weights.items() if w > 0}

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> UniMRGConfig:
        """Defaults, then the TOML file's keys (named like the fields), then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)
