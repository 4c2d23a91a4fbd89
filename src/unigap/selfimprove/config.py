"""`SelfImproveConfig`: every knob of a self-improvement run (SPEC §2, arXiv 2507.16663), loadable from TOML.

Kept apart from the recipe (as `TrainConfig` is from `DPOTrainer`) so a bad value fails before a slow model
load, the settings can be saved next to the run, and a resumed run can refuse different settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unigap.atomic import path_setting
from unigap.errors import UserError
from unigap.evaluate.data import HELD_OUT_SPLITS
from unigap.evaluate.judges import check_judge_name
from unigap.model.generation import CFG_SCALE
from unigap.train.config import check_field_types, check_ranges, load_config
from unigap.world import SPLITS

METHODS = ("sft", "dpo", "curriculum-sft", "curriculum-dpo")
LABELS = ("self", "verifier", "poor")
# What trains: LoRA on the shared LLM always; the paper's ablation adds the aligners (both projectors), then the
# vision tower, as fully trained copies (peft `modules_to_save`). The paper found the LLM alone best. On Janus the
# losses here, on image tokens, reach only the generation aligner of these: the understanding aligner and the vision
# tower get no gradient and stay as loaded.
TRAINABLE: dict[str, tuple[str, ...]] = {
    "llm": (),
    "llm+aligners": ("aligner", "generation_aligner"),
    "llm+aligners+vision": ("aligner", "generation_aligner", "vision_model"),
}
# The guard stops a run when the audited precision of its accepted images is significantly below the audited base
# rate (the share of all its images the independent judge accepts; a one-sided binomial test, p < 0.05, so that a
# handful of audited images cannot stop it): SFT on the accepted images then teaches the model images that are
# correct *less* often than its own samples already are, which can only degrade it.


@dataclass(frozen=True)
class SelfImproveConfig:
    """One self-improvement run. Defaults: the paper's N = 10 and LLM-only LoRA; curriculum replay half-way."""

    method: str = "curriculum-sft"
    labels: str = "self"  # self = the method; verifier = the independent judge labels (`labeller`; upper bound); poor
    prompts: str = field(default="train", metadata=path_setting(SPLITS))  # train (distinct prompts) or a prompt file
    n_prompts: int = 300
    samples: int = 10  # N images per prompt
    epochs: int = 4
    curriculum_at: int = 0  # epoch after which the discard pool is replayed; 0 = half-way (epochs // 2)
    trainable: str = "llm"
    lr: float = 2e-4
    batch_size: int = 16  # SFT images (DPO: pairs) per optimiser step
    beta: float = 0.1  # DPO
    nll_weight: float = 1.0  # DPO: NLL on the chosen image (SPEC §2)
    # the CFG scale the losses are computed under: unset, the sampling policy's (`cfg_scale`, which it then
    # follows); 0 = the conditional logits alone. Images are sampled with CFG, and a conditional-only loss moves
    # logits that guidance then multiplies by cfg_scale: on the shipped model that halved generation accuracy even
    # with the verifier's labels (docs/experiments.md)
    loss_cfg_scale: float | None = None
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    audit: str = field(default="verifier", metadata=path_setting())  # a judge (verifier, clip:DIR, vlm:DIR), or none
    audit_size: int = 200  # labels checked by the independent judge per labelling round
    guard: bool = True  # stop (exit 3) when the audited precision is significantly below the audited base rate
    eval_n: int = 300  # held-out (test) prompts for the before/after comparison; 0 = none (the study evaluates)
    epoch_eval_n: int = 100  # validation prompts measured after each epoch (the per-epoch figure)
    seed: int = 0
    data_seed: int = 0
    cfg_scale: float = CFG_SCALE  # sampling's guidance, the sampler's: 1 = none, 0 = the unconditional logits alone
    temperature: float = 1.0
    sample_batch: int = 64  # images per sampling call
    bf16: bool = False  # bf16 autocast of training (TRL's bf16=True): float32 weights and optimiser
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, same gradients

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.loss_cfg_scale is None:  # (a fixed 5 trained a run that sampled at another scale on a policy it never
            if self.cfg_scale == 0:  # sampled from)
                raise UserError("cfg-scale 0 samples from the unconditional logits alone, which no loss scale "
                                "trains: set loss_cfg_scale (0 = the conditional logits alone)")
            object.__setattr__(self, "loss_cfg_scale", self.cfg_scale)
        choices = {"method": METHODS, "labels": LABELS, "trainable": tuple(TRAINABLE)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown {name} {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if self.prompts in HELD_OUT_SPLITS:
            raise UserError(f"--prompts {self.prompts}: the {self.prompts} split is held out (the before/after "
                            "evaluation draws from test, the per-epoch probe from val); train on train or a prompt "
                            "file")
        if self.audit != "none":
            try:
                check_judge_name(self.audit, independent=True)
            except UserError as exc:
                raise UserError(f"audit: {exc}, or none") from None
        check_ranges(self, positive=("n_prompts", "samples", "epochs", "lr", "batch_size", "beta", "lora_rank",
                                     "lora_alpha", "max_grad_norm", "sample_batch"),
                     non_negative=("nll_weight", "weight_decay", "audit_size", "eval_n", "epoch_eval_n", "seed",
                                   "data_seed"),
                     temperatures=("temperature",), guidance=("cfg_scale", "loss_cfg_scale"))  # (one follows the other)
        if self.audit != "none" and self.audit_size == 0:  # (its guard would never act, and its record read as passed)
            raise UserError(f"audit-size 0 audits nothing: give it a positive size, or audit = \"none\" (--judge none) "
                            f"to run without the {self.audit} audit")
        if self.objective == "dpo" and self.samples < 2:
            raise UserError("DPO needs --samples >= 2: a pair is an accepted and a rejected image of one prompt")
        if self.curriculum and self.epochs < 2:  # (the replay comes after an epoch and before another)
            raise UserError(f"{self.method} replays the discard pool between epochs: it needs --epochs >= 2, got "
                            f"{self.epochs} (or --method {self.objective})")
        if self.curriculum and not 0 <= self.curriculum_at < self.epochs:
            raise UserError(f"curriculum-at must lie in [1, epochs - 1] (or 0 = half-way), got {self.curriculum_at}")
        if not self.curriculum and self.curriculum_at:
            raise UserError(f"curriculum-at applies to the curriculum methods (curriculum-sft, curriculum-dpo), "
                            f"not {self.method}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora-dropout must lie in [0, 1), got {self.lora_dropout}")

    @property
    def curriculum(self) -> bool:
        return self.method.startswith("curriculum")

    @property
    def objective(self) -> str:
        """sft or dpo."""
        return self.method.removeprefix("curriculum-")

    @property
    def replay_epoch(self) -> int | None:
        """The epoch after which the discard pool is regenerated and re-judged (None without curriculum)."""
        if not self.curriculum:
            return None
        return self.curriculum_at or max(1, self.epochs // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> SelfImproveConfig:
        """Defaults, then the TOML file's keys (named like the fields), then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)


def labeller(config: SelfImproveConfig) -> str:
    """The judge whose verdicts `labels = "verifier"` trains on: the independent judge (`audit`; a local CLIP or VLM
    on a real checkpoint's prompts, the paper's external-judge variant), the ShapeWorld verifier where there is none."""
    return "verifier" if config.audit == "none" else config.audit
