"""The maths of R3's GRPO, free of models: stage rewards, group advantages, the clipped token loss with its k3 KL.

Rewards (SPEC §3, with r ∈ [0, 1] an image's score — by default the verifier's graded score, perfect when 1 — and
f ∈ {0, 1} the format check):
* generation stage: image reward r (the tiny model writes no plan, so there is no text reward);
* reflect/refine stage: Δ = r_new − r_prev, except Δ = 1 when the previous image was perfect and the model said
  stop (a correct stop);
  text reward f + Δ·f; image reward r_new, and where no image was made (stopped, or a format failure) the
  starting image's r_prev carried forward, as R3's branches carry their image: every branch counts in the group's
  mean, and the advantage is zeroed only where no image was made.
Advantage = reward − group mean (`scale_rewards` "group" also divides by the group's std, "batch" by the std of every
reward of the step's groups of the same kind, as TRL does: `batch_scaled`). The PPO-clipped ratio π/π_old (clipped to
[1 − ε, 1 + ε_high], TRL's `epsilon` and `epsilon_high`) times the advantage, plus β times the k3 estimate of
KL(π‖π_ref) per token; π_old is the policy the samples were drawn from, so the ratio is 1 at a rollout's first update
and moves only over TRL's `num_iterations` updates of it. A reflection's ratio is per token, aggregated by TRL's
`loss_type` (`text_loss`; by default R3's token-level sum / count over the group, TRL's "bnpo" with a group as the
batch); an image's is the ratio of its mean per-token log-probs, clipped as one (R3's; `image_token_loss`), its KL
the mean over its tokens, then images are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


def refine_rewards(r_prev: Sequence[float], r_new: Sequence[float | None], stopped: Sequence[bool],
                   format_ok: Sequence[bool], prev_perfect: Sequence[bool],
                   ) -> tuple[list[float], list[float], list[float]]:
    """Per branch: (Δ, text reward, image reward: r_new, or r_prev carried forward where no image was made)."""
    deltas, text, image = [], [], []
    for prev, new, stop, ok, perfect in zip(r_prev, r_new, stopped, format_ok, prev_perfect, strict=True):
        if stop:
            delta = 1.0 if perfect else 0.0
        elif new is None:
            delta = 0.0
        else:
            delta = new - prev
        f = float(ok)
        deltas.append(delta)
        text.append(f + delta * f)
        image.append(prev if stop or new is None else new)
    return deltas, text, image


def _defined(rewards: Sequence[float | None]) -> torch.Tensor:
    return torch.tensor([r for r in rewards if r is not None], dtype=torch.float32)


def _std(defined: torch.Tensor) -> torch.Tensor:
    """The sample std of defined rewards (0 below two: one reward does not spread)."""
    return defined.std() if len(defined) > 1 else torch.tensor(0.0)


def advantages(rewards: Sequence[float | None], scale: str = "none") -> torch.Tensor:
    """reward − mean over the group's defined rewards (÷ their std with `scale` "group"; "batch" scales later, once
    the step's every group is known: `batch_scaled`); 0 where undefined."""
    defined = _defined(rewards)
    out = torch.zeros(len(rewards))
    if len(defined) == 0:
        return out
    mean, std = defined.mean(), _std(defined)
    for i, r in enumerate(rewards):
        if r is not None:
            out[i] = (r - mean) / (std + 1e-4) if scale == "group" else r - mean
    return out


class TokenLoss(NamedTuple):
    """`token_loss`'s per-token tensors [B, T], each zero (False) outside the mask."""

    loss: torch.Tensor
    kl: torch.Tensor
    low_clipped: torch.Tensor  # ratio below 1 − ε where the advantage is negative (TRL's `clip_ratio/low`)
    high_clipped: torch.Tensor  # ratio above 1 + ε_high where it is positive (`clip_ratio/high`)


def batch_scaled(advantage: torch.Tensor, rewards: Sequence[float | None]) -> torch.Tensor:
    """Advantages divided by the (sample) std of `rewards`, all the step's defined rewards of their kind: TRL's
    `scale_rewards="batch"` (std 0 below two rewards)."""
    return advantage / (_std(_defined(rewards)) + 1e-4)


def k3(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(π‖π_ref) per token (Schulman's; TRL's and R3's): exp(d) − d − 1, d = log π_ref − log π."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1


def token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
               mask: torch.Tensor, advantage: torch.Tensor, epsilon: float, epsilon_high: float,
               beta: float) -> TokenLoss:
    """Per-token PPO-clip loss with the k3 KL, as TRL's GRPOTrainer computes it.

    logprobs (with gradients), old_logprobs (the sampling policy's, detached), ref_logprobs, mask: [B, T]; advantage:
    [B]. The caller aggregates the loss (`text_loss`, `image_loss`)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantage.to(logprobs.device).unsqueeze(-1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None and beta > 0:
        kl = k3(ref_logprobs, logprobs)
        loss = loss + beta * kl
    low = (ratio < 1 - epsilon) & (adv < 0) & mask
    high = (ratio > 1 + epsilon_high) & (adv > 0) & mask
    return TokenLoss(torch.where(mask, loss, 0.0), torch.where(mask, kl, 0.0), low, high)


LOSS_TYPES = ("bnpo", "grpo", "dr_grpo")


def text_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "bnpo",
              max_completion_length: int | None = None, rows: int | None = None,
              tokens: int | None = None) -> torch.Tensor:
    """Completions' per-token losses [B, T] (zero outside `mask`) as one loss, TRL's way per `loss_type`: "bnpo" (R3's)
    the sum over every trained token of the batch / their count; "grpo" each completion's mean over its tokens, then
    the mean over completions (shorter completions weigh more per token: the length bias Dr. GRPO names); "dr_grpo"
    the sum / (B × `max_completion_length`), a constant that removes that bias. For some rows of a batch, `rows` and
    `tokens` are the whole batch's completions and trained tokens: the batch's loss is the sum of its rows' losses."""
    if loss_type == "bnpo":
        return per_token.sum() / (mask.sum().clamp(min=1) if tokens is None else max(tokens, 1))
    if loss_type == "grpo":
        means = per_token.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        return means.mean() if rows is None else means.sum() / rows
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo divides by max_completion_length: give it")
        return per_token.sum() / ((per_token.size(0) if rows is None else rows) * max_completion_length)
    raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


def image_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                     advantage: torch.Tensor, epsilon: float, epsilon_high: float, beta: float) -> TokenLoss:
    """`token_loss` for images [B, N] (every image has all N tokens), R3's way: an image's log-prob is its mean
    per-token log-prob, so its ratio exp(mean log π − mean log π_old) is clipped once for the whole image (its clip
    flags set on each of its tokens). Each token carries the image's clipped term plus β times its own k3 KL, so
    `image_loss` gives the image's term + β × its mean KL. At a rollout's first update (ratio 1) the gradient is the
    per-token ratio's."""
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    whole = token_loss(logprobs.mean(dim=-1, keepdim=True), old_logprobs.mean(dim=-1, keepdim=True), None,
                       mask[:, :1], advantage, epsilon, epsilon_high, 0.0)  # [B, 1]
    kl = k3(ref_logprobs, logprobs) if ref_logprobs is not None and beta > 0 else torch.zeros_like(logprobs)
    return TokenLoss(whole.loss + beta * kl, kl, whole.low_clipped.expand_as(mask), whole.high_clipped.expand_as(mask))


def image_loss(per_token: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Images' per-token losses [B, N] (every image has all N tokens, B >= 1) as one loss: each image's mean over its
    tokens, then the mean over images (over `rows` images, the whole batch's, when these are some of its rows)."""
    means = per_token.mean(dim=-1)
    return means.mean() if rows is None else means.sum() / rows
