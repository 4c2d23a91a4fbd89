"""The DPO loss core: preference pairs, the loss formula, and one task's loss on a `UnifiedModel`.

Why a module of its own: the trainer, the gradient diagnostics (`unigap.diagnose`) and the benchmark all
need exactly the same per-task loss, so there is one definition. Stable public API:

* `UnderstandingPair(image, question, chosen, rejected, ref_chosen, ref_rejected, ...)` and
  `GenerationPair(prompt, chosen, rejected, ref_chosen, ref_rejected, ...)` — one preference pair each,
  with the reference policy's summed log-probs stored (SPEC §1: π_ref is fixed per pair, compute once).
* `dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid",
  *, chosen_tokens=None, rejected_tokens=None, length_normalize=False, nll_weight=0.0) -> DPOOutput`
  — pure tensor maths on per-pair summed log-probs.
* `task_dpo_loss(um, pairs, options=DPOOptions()) -> TaskLoss` — the policy log-probs of a batch of pairs
  of one task (understanding: summed answer-token log-probs via `answer_logprobs`; generation: summed
  image-token log-probs via `image_logprobs`, conditional-only unless `options.cfg_scale` is set), then
  `dpo_loss`. `TaskLoss.loss` is the differentiable scalar; `TaskLoss.metrics` holds floats
  `dpo_loss`, `reward_margin`, `accuracy`, `kl` and TRL's diagnostics (`TRL_KEYS`), batch means.
* `reference_logprobs(um, pairs, cfg_scale=None)` — (sum, count) under the base model (adapters disabled),
  what the preference builder stores and what the benchmark's "recompute" variant calls every step.

Formulas, with r = log π_θ(y|x) − log π_ref(y|x) (per pair; divided by the token count when
`length_normalize`, and always for IPO, as TRL's `loss_type="ipo"` does: its margin 1/(2β) is a per-token target,
meaningless for a sum over 576 image tokens) and h = r_w − r_l:
* sigmoid (Rafailov et al.): L = −log σ(β·h)
* ipo (Azar et al.): L = (h − 1/(2β))²
* NLL on the chosen (RPO-style, as in self-improvement DPO, SPEC §2): + nll_weight · (−log π_θ(y_w|x) / |y_w|),
  always per token so its scale does not depend on the answer or image length.
Reward margin = β·h, accuracy = 1[h > 0]; KL estimate = mean over chosen and rejected of log π_θ − log π_ref
in nats per sequence — a plug-in estimate on the pair's sequences (they are not fresh policy samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal


import torch
import torch.nn.functional as F

from unigap import distributed
from unigap.model.images import ImageInput
from unigap.model.unified import UnifiedModel

LossType = Literal["sigmoid", "ipo"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo")


@dataclass(frozen=True)
class UnderstandingPair:
    """(image, question) with a preferred and a dispreferred answer, and their reference log-probs."""

    image: ImageInput
    question: str
    chosen: str
    rejected: str
    ref_chosen: float
    ref_rejected: float
    chosen_tokens: int
    rejected_tokens: int


@dataclass(frozen=True)
class GenerationPair:
    """A prompt with a preferred and a dispreferred image (VQ token ids), and their reference log-probs."""

    prompt: str
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    ref_chosen: float
    ref_rejected: float

    @property
    def chosen_tokens(self) -> int:
        return len(self.chosen)

    @property
    def rejected_tokens(self) -> int:
        return len(self.rejected)


Pair = UnderstandingPair | GenerationPair


@dataclass(frozen=True)
class DPOOutput:
    """Per-pair results of `dpo_loss`; `loss` is the batch mean (what is backpropagated). `preference` is the DPO/IPO
    term alone (without the NLL term): under the sigmoid loss, what 'no signal' (≈ ln 2) and over-optimisation (≈ 0)
    are read from (IPO's starts at 1/(4β²) and is 0 at its target margin)."""

    loss: torch.Tensor
    losses: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor
    kl: torch.Tensor
    preference: torch.Tensor


@dataclass(frozen=True)
class DPOOptions:
    """How the loss is formed from log-probs; shared by every task so strategies compare like with like."""

    beta: float = 0.1
    loss_type: LossType = "sigmoid"
    length_normalize: bool = False
    nll_weight: float = 0.0
    # generation only: score under CFG-mixed logits (SPEC §1 variant); the stored reference log-probs must
    # then have been computed with the same scale (`prefs build` stores conditional-only ones)
    cfg_scale: float | None = None

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown DPO loss type {self.loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.nll_weight >= 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")

    @property
    def per_token(self) -> bool:
        """Whether the loss compares log-ratios per token: `length_normalize`, or IPO (as TRL: its 1/(2β) target is
        per token)."""
        return self.length_normalize or self.loss_type == "ipo"


@dataclass(frozen=True)
class TaskLoss:
    """One task's differentiable loss and its logged batch means."""

    loss: torch.Tensor
    metrics: dict[str, float]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    *,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    length_normalize: bool = False,
    nll_weight: float = 0.0,
) -> DPOOutput:
    """DPO (sigmoid) or IPO loss on per-pair summed log-probs [B]; see the module docstring for formulas."""
    length_normalize = DPOOptions(beta, loss_type, length_normalize, nll_weight).per_token  # (validated)
    needs_counts = length_normalize or nll_weight > 0
    if needs_counts and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError("length_normalize and nll_weight need chosen_tokens and rejected_tokens")
    ref_chosen = ref_chosen.to(policy_chosen)
    ref_rejected = ref_rejected.to(policy_rejected)
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    kl = (chosen_ratio.detach() + rejected_ratio.detach()) / 2
    if length_normalize:
        chosen_ratio = chosen_ratio / chosen_tokens.to(chosen_ratio)
        rejected_ratio = rejected_ratio / rejected_tokens.to(rejected_ratio)
    h = chosen_ratio - rejected_ratio
    preference = -F.logsigmoid(beta * h) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2
    losses = preference
    if nll_weight > 0:
        losses = preference + nll_weight * (-policy_chosen / chosen_tokens.to(policy_chosen))
    margins = (beta * h).detach()
    return DPOOutput(losses.mean(), losses.detach(), margins, (margins > 0).float(), kl, preference.detach())


def _check_one_task(pairs: Sequence[Pair]) -> type:
    kinds = {type(pair) for pair in pairs}
    if len(kinds) != 1 or not kinds <= {UnderstandingPair, GenerationPair}:
        raise ValueError(
            f"pairs must be a non-empty batch of one task's pairs, got {sorted(k.__name__ for k in kinds)}"
        )
    return kinds.pop()


def sequence_logprobs(
    um: UnifiedModel, pairs: Sequence[Pair], cfg_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen sum, rejected sum, chosen count, rejected count) [B] under the model as it is now.

    Chosen and rejected run as one batch of 2B (left-padding makes batched == unbatched).
    """
    kind = _check_one_task(pairs)
    n = len(pairs)
    if kind is UnderstandingPair:
        images = [p.image for p in pairs] * 2
        questions = [p.question for p in pairs] * 2
        answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        sums, counts = um.answer_logprobs(images, questions, answers)
    else:
        prompts = [p.prompt for p in pairs] * 2
        tokens = torch.tensor([p.chosen for p in pairs] + [p.rejected for p in pairs], dtype=torch.long)
        sums, counts = um.image_logprobs(prompts, tokens, cfg_scale=cfg_scale)
    return sums[:n], sums[n:], counts[:n], counts[n:]


@torch.no_grad()
def reference_logprobs(
    um: UnifiedModel, pairs: Sequence[Pair], cfg_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sequence_logprobs` under the reference policy (the base model: adapters disabled)."""
    with um.adapters_disabled():
        return sequence_logprobs(um, pairs, cfg_scale)


REFERENCE_BATCH = 8  # pairs scored at once where a whole file is rescored: all of them in one batch would not fit


def with_reference(um: UnifiedModel, pairs: Sequence[Pair], cfg_scale: float | None = None,
                   batch: int | None = None, shared: bool = False) -> list[Pair]:
    """The pairs with reference log-probs (and answer token counts) replaced by freshly computed ones, `batch`
    pairs at a time (all at once by default: a caller's batch). `shared`: the batches shared between the processes
    under `accelerate launch`, every process receiving every pair's numbers (each computed them all), for a caller
    that is not already inside a shared loop."""
    step = batch or max(len(pairs), 1)
    chunks = [pairs[start : start + step] for start in range(0, len(pairs), step)]

    def numbers(chunk: Sequence[Pair]) -> list[tuple[float, float, int, int]]:
        return list(zip(*(values.tolist() for values in reference_logprobs(um, chunk, cfg_scale)), strict=True))

    if shared:
        scored = [row for done in distributed.ordered_rounds(chunks, numbers) for rows in done for row in rows]
    else:
        scored = [row for chunk in chunks for row in numbers(chunk)]
    out: list[Pair] = []
    for pair, (chosen, rejected, chosen_tokens, rejected_tokens) in zip(pairs, scored, strict=True):
        fields = {"ref_chosen": chosen, "ref_rejected": rejected}
        if isinstance(pair, UnderstandingPair):  # a generation pair's counts are its token tuples' lengths
            fields |= {"chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}
        out.append(replace(pair, **fields))
    return out


def task_dpo_loss(um: UnifiedModel, pairs: Sequence[Pair], options: DPOOptions = DPOOptions()) -> TaskLoss:
    """One task's DPO loss on a batch of its pairs under the model's current (adapted) policy."""
    chosen, rejected, n_chosen, n_rejected = sequence_logprobs(um, pairs, options.cfg_scale)
    out = dpo_loss(
        chosen,
        rejected,
        torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32),
        torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32),
        options.beta,
        options.loss_type,
        chosen_tokens=n_chosen,
        rejected_tokens=n_rejected,
        length_normalize=options.length_normalize,
        nll_weight=options.nll_weight,
    )
    logps = [chosen.detach().float().cpu(), rejected.detach().float().cpu(),
             torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32),
             torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)]
    if options.per_token:  # as the loss compares them (and TRL logs IPO's)
        counts = [n.float().cpu() for n in (n_chosen, n_rejected)] * 2
        logps = [value / count for value, count in zip(logps, counts, strict=True)]
    metrics = {
        "dpo_loss": float(out.preference.mean()),  # the NLL term apart: ln 2 = no signal, 0 = separated
        "reward_margin": float(out.margins.mean()),
        "accuracy": float(out.accuracies.mean()),
        "kl": float(out.kl.mean()),
        **trl_metrics(*logps, options.beta),
    }
    return TaskLoss(out.loss, metrics)



TRL_KEYS = ("logps/chosen", "logps/rejected", "ref_logps/chosen", "ref_logps/rejected", "rewards/chosen",
            "rewards/rejected", "rewards/margins", "rewards/accuracies")


def trl_metrics(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                beta: float) -> dict[str, float]:
    """TRL's DPO diagnostics under its names (`TRL_KEYS`, batch means): the policy's and the reference's log-probs of
    the chosen and rejected sequences (summed, or per token where the loss compares them so: TRL's IPO, and
    `length_normalize`), the implicit rewards β·(log π − log π_ref) of each, their margin and how often it is
    positive. Over-optimisation shows as `logps/chosen` falling below `ref_logps/chosen` while the loss goes to 0 (the
    rejected ones are pushed down, the chosen not raised)."""
    chosen_rewards, rejected_rewards = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return {
        "logps/chosen": float(chosen.mean()),
        "logps/rejected": float(rejected.mean()),
        "ref_logps/chosen": float(ref_chosen.mean()),
        "ref_logps/rejected": float(ref_rejected.mean()),
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
    }
