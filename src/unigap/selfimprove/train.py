"""The training half of self-improvement: SFT on accepted images, or DPO on accepted vs rejected ones.

* SFT loss: the mean per-token NLL of each accepted image given its prompt, under `loss_cfg_scale` (the sampler's
  CFG by default, 0: the conditional alone), batch mean.
* DPO: pairs of one prompt's accepted and rejected images (a seeded shuffle of each, zipped: min(|A|, |R|) pairs
  per prompt), `task_dpo_loss` with the NLL term on the chosen image (SPEC §2); the reference log-probs are the
  base model's (adapters disabled), computed once per pair.
AdamW at a constant learning rate, gradients clipped (`optimizer_step`: a non-finite norm stops the run); an epoch logs
its mean loss and gradient norm before clipping. One epoch = one pass over the examples in a seeded order.
With `bf16` the losses (and the reference log-probs) run under bf16 autocast over float32 weights, as TRL's
`bf16=True`; with `gradient_checkpointing` the LoRA model recomputes activations in the backward pass.
Under `accelerate launch` each process takes its share of every batch and the gradients are summed
(`unigap.distributed`): the same steps as one process, up to float summation order (with `lora_dropout` 0: dropout
draws its masks per process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unigap import distributed
from unigap.selfimprove.config import SelfImproveConfig
from unigap.selfimprove.pool import Sample
from unigap.train.dpo import DPOOptions, GenerationPair, task_dpo_loss, with_reference
from unigap.train.loop import TrainingDiverged, bf16_autocast, optimizer_step

ORDER_STREAM = 7
REFERENCE_BATCH = 16  # pairs per reference forward pass
UNTRAINED = {"steps": 0, "loss": None, "grad_norm": None}  # the record of an epoch with nothing to train on


def dpo_pairs(um: Any, samples: Sequence[Sample], config: SelfImproveConfig) -> list[GenerationPair]:
    """Accepted-vs-rejected pairs of the same prompt, with the base model's reference log-probs (under the loss's
    CFG scale, and its autocast: training starts at the reference, exactly in float32; under --bf16 to within the
    rounding that moves with a batch's shape, up to ~0.1 nats on the shipped model, since the epochs reshuffle)."""
    by_prompt: dict[int, tuple[list[Sample], list[Sample]]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_index, ([], []))[0 if s.accepted else 1].append(s)
    pairs = []
    for index in sorted(by_prompt):
        accepted, rejected = by_prompt[index]
        rng = np.random.default_rng([config.seed, ORDER_STREAM, index])
        accepted = [accepted[i] for i in rng.permutation(len(accepted))]
        rejected = [rejected[i] for i in rng.permutation(len(rejected))]
        pairs += [GenerationPair(a.spec.text, a.tokens, r.tokens, 0.0, 0.0) for a, r in zip(accepted, rejected)]
    with bf16_autocast(um.device, config.bf16):
        return with_reference(um, pairs, config.loss_cfg_scale or None, REFERENCE_BATCH, shared=True)


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return np.random.default_rng([seed, ORDER_STREAM, 10_000 + epoch]).permutation(n).tolist()


def sft_loss(um: Any, batch: Sequence[Sample], cfg_scale: float | None = None) -> torch.Tensor:
    tokens = torch.tensor([s.tokens for s in batch], dtype=torch.long, device=um.device)
    sums, counts = um.image_logprobs([s.spec.text for s in batch], tokens, cfg_scale=cfg_scale)
    return -(sums / counts).mean()


def train_epoch(
    um: Any, optimizer: torch.optim.Optimizer, config: SelfImproveConfig, epoch: int,
    sft: Sequence[Sample], pairs: Sequence[GenerationPair], update: Any,
) -> dict[str, Any]:
    """One pass over the SFT examples (sft) or the pairs (dpo); the epoch's mean loss and metrics."""
    examples: Sequence[Any] = sft if config.objective == "sft" else pairs
    if not examples:
        return dict(UNTRAINED)
    cfg = config.loss_cfg_scale or None
    options = DPOOptions(beta=config.beta, nll_weight=config.nll_weight, cfg_scale=cfg)
    order = epoch_order(config.seed, epoch, len(examples))
    named = [(name, p) for name, p in um.model.named_parameters() if p.requires_grad]
    rows: list[list[float]] = []  # per step: loss, and for DPO the reward margin and accuracy
    norms: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    um.model.train()
    try:
        for start in range(0, len(order), config.batch_size):
            batch = [examples[i] for i in order[start : start + config.batch_size]]
            mine = [batch[i] for i in distributed.shard(np.arange(len(batch)))]
            share = len(mine) / len(batch)  # this process's part of the batch mean
            values = [0.0] * (1 if config.objective == "sft" else 3)
            if mine:
                with bf16_autocast(um.device, config.bf16):  # the forward pass; backward follows its ops' dtypes
                    if config.objective == "sft":
                        loss = sft_loss(um, mine, cfg)
                    else:
                        result = task_dpo_loss(um, mine, options)
                        loss = result.loss
                        values[1:] = [result.metrics["reward_margin"] * share, result.metrics["accuracy"] * share]
                (loss * share).backward()
                values[0] = float(loss.detach()) * share
            rows.append(distributed.all_sum(torch.tensor(values, dtype=torch.float64)).tolist())
            if not math.isfinite(rows[-1][0]):
                raise TrainingDiverged(f"non-finite loss in epoch {epoch}: training stopped")
            distributed.sum_gradients([p for _, p in named])
            norms.append(optimizer_step(named, optimizer, None, config.max_grad_norm,
                                        f"{len(rows)} of epoch {epoch}"))
            update(start + len(batch), f"loss {rows[-1][0]:.3f}")
    finally:
        um.model.eval()
    record: dict[str, Any] = {"steps": len(rows), "loss": math.fsum(r[0] for r in rows) / len(rows),
                              "grad_norm": float(np.mean(norms))}
    if config.objective == "dpo":
        record |= {"rewards/margins": float(np.mean([r[1] for r in rows])),
                   "rewards/accuracies": float(np.mean([r[2] for r in rows]))}
    return record
