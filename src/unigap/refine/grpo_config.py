"""`GRPOConfig`: every knob of `unigap refine train`, R3's GRPO of generation, reflection and refinement (SPEC §3).

Names follow TRL's `GRPOConfig` where TRL has the knob (`num_generations`, `temperature`, `beta`, `epsilon`,
`epsilon_high`, `num_iterations`, `scale_rewards`, `loss_type`, `max_completion_length`, `mask_truncated_completions`)
and unigap's trainers elsewhere (`lr`, `steps`, `seed`, `lora_*`, `max_grad_norm`, `checkpoint_every`). Defaults are
R3's where they differ from TRL's, said per field: `beta` 0.001 (TRL 0.0: R3 keeps a KL to the frozen reference),
`scale_rewards` "none" (TRL "group": R3 does not divide advantages by the group's reward std), `loss_type` "bnpo" (TRL
"dapo": both divide by the trained tokens, of the local batch and of the global one; here a group is a batch, as in
R3), groups of 16, and `image_loss_weight` 2 (TRL has no images: R3's `mse_weight` on its images' policy term).
One optimiser step per rollout by default (TRL's `num_iterations` 1, R3's too), so the PPO ratio is
1 at the update and `epsilon` only clips once `num_iterations` > 1 reuses a rollout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unigap.atomic import path_setting
from unigap.errors import UserError
from unigap.evaluate.judges import JUDGES, VERIFIER, check_judge_name
from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE, EditGuidance
from unigap.model.generation import CFG_SCALE
from unigap.refine.grpo_loss import LOSS_TYPES
from unigap.train.config import check_field_types, check_ranges, load_config

SCALE_REWARDS = ("none", "group", "batch")
STAGES = ("tree", "generate")
# the verifier's rewards: its graded score (partial credit per satisfied part), or its verdict (1 correct, else 0: the
# accuracy the loop is measured by); neither needs the guard a judge's reward has
VERIFIER_REWARDS = (VERIFIER, "verifier-binary")


@dataclass(frozen=True)
class GRPOConfig:
    """One GRPO run of the refine loop on the shipped model's scale."""

    steps: int = 200  # optimiser steps; a rollout every num_iterations of them (1: every step)
    stages: str = "tree"  # R3's: even rollouts train generation, odd ones reflect + refine; "generate": that alone
    # what scores each image: "verifier" (its graded score; perfect = satisfied), "verifier-binary" (its verdict,
    # 1 or 0), or a judge by name (its score; perfect = it accepts): self-pyes (the model's own judge:
    # self-rewarded), base-pyes (its judge before the adapter: a frozen reward model), clip:DIR, vlm:DIR. A buffered
    # image keeps the score it was given when made.
    reward: str = field(default="verifier", metadata=path_setting())
    # with a judge as the reward: stop (exit 3) when the verifier's accuracy on the training images of the latest
    # `audit_window` generation steps is below that of the first window (one-sided Welch on the steps, p < 0.01)
    guard: bool = True
    audit_window: int = 10
    lr: float = 3e-4  # R3: 5e-6 for the full model; a LoRA needs more: chosen on the validation split (experiments)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95  # R3's betas; no weight decay
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    num_generations: int = 16  # G: samples per group (TRL's name); R3: 16
    prompts_per_step: int = 4  # groups per step (TRL counts completions instead: per_device_train_batch_size = P·G)
    temperature: float = 1.0
    cfg_scale: float = CFG_SCALE  # images are sampled, and scored, under this guidance (1 = none; 0 = unconditional)
    edit_cfg_scale: float = EDIT_CFG_SCALE  # and edits under this one (`unigap.model.editing.EditGuidance`)
    edit_image_cfg_scale: float = EDIT_IMAGE_CFG_SCALE
    beta: float = 0.001  # KL weight, k3 estimator against the frozen reference (TRL default 0.0; R3 0.001)
    image_loss_weight: float = 2.0  # the images' policy term against the reflections' (R3's `mse_weight`; no KL)
    epsilon: float = 0.2  # PPO clip range: the ratio is kept >= 1 − epsilon
    epsilon_high: float | None = None  # and <= 1 + epsilon_high (DAPO's clip-higher); None: epsilon, as in TRL
    num_iterations: int = 1  # optimiser steps on each rollout (TRL's μ); R3 and TRL: 1 (>1: the audit guard's
    # window counts generation rollouts)
    # R3: advantages are reward − group mean, not divided by a std (TRL: "group", the group's; "batch", the step's)
    scale_rewards: str = "none"
    loss_type: str = "bnpo"  # how a group's reflection tokens make one loss (`grpo_loss.text_loss`); R3: "bnpo"
    perfect_fraction: float = 0.15  # refine steps draw this share of their images from the perfect buffer (R3)
    max_completion_length: int = 24  # reflection tokens
    mask_truncated_completions: bool = False  # leave reflections cut off at that length out of the loss (TRL's)
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0  # only 0: the policy runs in eval mode (rollouts and the update see the same policy)
    seed: int = 0
    data_seed: int = 0  # the train split's partition; training prompts are train-split prompts only
    eval_n: int = 300  # held-out prompts for the before/after refine loop; 0 = none (the study evaluates)
    eval_rounds: int = 3
    eval_split: str = "test"  # where those prompts come from: test, or val to choose settings
    checkpoint_every: int = 25
    # samples scored and back-propagated at once, a group's loss summed over its spans (TRL's
    # per_device_train_batch_size, with gradient accumulation making up the step): None = a whole group at once, as
    # every recorded run. Bounds the activations a step holds (a Janus-Pro-1B needs it: docs/experiments.md); the
    # same gradient up to rounding, so a run may resume under another value
    micro_batch_size: int | None = None
    bf16: bool = False  # bf16 autocast (TRL's bf16=True): float32 weights and optimiser, matmuls in bfloat16

    def __post_init__(self) -> None:
        check_field_types(self)
        check_ranges(self, positive=("steps", "lr", "max_grad_norm", "prompts_per_step", "epsilon",
                                     "max_completion_length", "lora_rank", "lora_alpha", "checkpoint_every",
                                     "num_iterations", "image_loss_weight"),
                     non_negative=("beta", "warmup_steps", "seed", "data_seed", "eval_n", "eval_rounds"),
                     temperatures=("temperature",), guidance=("cfg_scale", "edit_cfg_scale", "edit_image_cfg_scale"))
        if self.micro_batch_size is not None and not self.micro_batch_size > 0:
            raise UserError(f"micro-batch-size must be positive (or unset: a whole group), got {self.micro_batch_size}")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise UserError(f"epsilon-high must be positive (or unset: epsilon), got {self.epsilon_high}")
        if self.checkpoint_every % self.num_iterations:
            raise UserError(f"checkpoint-every ({self.checkpoint_every}) must be a multiple of num-iterations "
                            f"({self.num_iterations}): a checkpoint is written between rollouts")
        if self.num_generations < 2:
            raise UserError(f"num-generations must be >= 2: an advantage is a reward minus its group's mean, "
                            f"got {self.num_generations}")
        if self.eval_split not in ("test", "val"):
            raise UserError(f"--split (eval_split) must be test or val, got {self.eval_split!r}")
        if self.temperature == 0:
            raise UserError("temperature must be > 0: a group of greedy samples is one sample")
        if self.audit_window < 2:
            raise UserError(f"audit-window must be >= 2 steps (a window's spread is tested), got {self.audit_window}")
        if self.stages not in STAGES:
            raise UserError(f"stages must be one of {', '.join(STAGES)}, got {self.stages!r}")
        try:
            if self.reward not in VERIFIER_REWARDS:
                check_judge_name(self.reward)
        except UserError as exc:  # the judges' list already names `verifier`; add the rewards only GRPO knows
            extra = [name for name in VERIFIER_REWARDS if name not in JUDGES]
            raise UserError(f"reward: {exc}, or {', '.join(extra)}") from None
        if self.loss_type not in LOSS_TYPES:
            raise UserError(f"loss-type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise UserError(f"scale-rewards must be one of {', '.join(SCALE_REWARDS)}, got {self.scale_rewards!r}")
        if not 0 <= self.perfect_fraction <= 1:  # (1: always a perfect start where the buffer has one)
            raise UserError(f"perfect-fraction must lie in [0, 1], got {self.perfect_fraction}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)}")
        if self.lora_dropout != 0:  # (a value recorded as if it had acted, while training was a run with 0)
            raise UserError(f"lora-dropout must be 0 in refine train, got {self.lora_dropout}: the policy runs in "
                            "eval mode, so that rollouts and the update see the same policy, and dropout never acts")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def edit_guidance(self) -> EditGuidance:
        return EditGuidance(self.edit_cfg_scale, self.edit_image_cfg_scale)

    @classmethod
    def load(cls, toml_file: Path | None = None, **overrides: Any) -> GRPOConfig:
        """Defaults, then the TOML file's keys (named like the fields), then the overrides that are not None."""
        return load_config(cls, toml_file, overrides)
