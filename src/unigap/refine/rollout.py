"""Rollouts of R3's two stages for one group, each image scored by a `Reward`, and the group's GRPO loss.

* `Reward`: by default the verifier's graded score (`image_score`, perfect exactly when the verifier is satisfied);
  any judge of `unigap.evaluate.judges` by name instead (its score, perfect where it accepts): `self-pyes` makes
  the run self-rewarded, `clip:DIR` / `vlm:DIR` reward by a local model. When the reward is not the verifier, the
  generation stage also logs the verifier's accuracy on the same images (`generate/audit/verifier_accuracy`) and
  on those the reward counts perfect (`generate/audit/precision`): the independent check of what a self-reward
  teaches (SPEC §2's co-degradation).
* `generation_group`: G images of one train prompt (CFG, temperature), each scored r; image advantage
  r − group mean.
* `refine_group`: G branches from one buffered image: a sampled reflection in a fresh context, then, unless it
  stops or fails the format check, the next image (an edit of the image; a model that cannot edit regenerates from
  the refined prompt). Rewards and advantages as `grpo_loss` states them; a reflection is scored as the token ids
  sampled (its EOS only where it sampled one), not as its text tokenised again.
Each returns a `Rollout`: its trained parts (text and/or images: how to score them under the current policy, at the
temperature they were sampled at, as TRL does; their advantages; and the reference's log-probs, the same way under
`adapters_disabled`, when β > 0), the new images for the rollout buffer, and its metrics. `rollout_loss` is the loss of
one update on it: TRL's `num_iterations` updates reuse one rollout, its first update's log-probs standing for the
policy that sampled it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from unigap.evaluate.judges import VERIFIER, get_judge
from unigap.model.decoding import token_entropies
from unigap.world.scoring import image_score
from unigap.refine.grpo_config import VERIFIER_REWARDS, GRPOConfig
from unigap.refine.grpo_loss import (
    advantages, batch_scaled, image_loss, image_token_loss, refine_rewards, text_loss, token_loss,
)
from unigap.refine.loop import acted_on, refined_prompt
from unigap.world import PromptSpec, parse_reflection

VERIFIER_REWARD = VERIFIER
WEIGHT = "_weight/"  # `WEIGHT + key`: how much a group's `key` weighs in the step's mean (default 1; not logged)


@dataclass(frozen=True)
class Buffered:
    """A rollout image kept for refine steps: its prompt (index into the training prompts), VQ ids and score."""

    prompt: int
    tokens: tuple[int, ...]
    score: float


@dataclass(frozen=True)
class Reward:
    """What an image earns: `score(um, images, spec)` in [0, 1] per image, and whether a score is `perfect` (the
    images a correct stop is rewarded on, and the buffer's perfect share)."""

    name: str
    score: Callable[[Any, list[Any], PromptSpec], list[float]]
    perfect: Callable[[float], bool]


def reward_for(name: str) -> Reward:
    """The reward `name`: `verifier` (graded), `verifier-binary` (the verifier's verdict), or a judge's name (its
    score; an undecided image scores 0)."""
    if name == VERIFIER_REWARD:
        return Reward(name, lambda um, images, spec: [image_score(im, spec, im.size[0]) for im in images],
                      lambda score: score == 1.0)
    judge = get_judge(VERIFIER if name in VERIFIER_REWARDS else name)

    def score(um: Any, images: list[Any], spec: PromptSpec) -> list[float]:
        return [0.0 if s is None else float(s) for s in judge.fn(um, images, [spec] * len(images))]

    return Reward(name, score, lambda value: bool(judge.accepts(value)))


# rows (a slice of the part's; all by default) → their (log-probs [b, T], mask [b, T]) under the policy
Scores = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Part:
    """One trained part of a group's rollout: the reflections ("text", aggregated by `loss_type`) or images ("image",
    each its mean over its tokens), rescored under the current policy at every update, in `spans` of its rows."""

    kind: str
    score: Scores
    advantage: torch.Tensor  # [B]
    reference: tuple[torch.Tensor, ...] | None  # log-probs under π_ref, one [b, T] per span; None when β = 0
    rewards: tuple[float | None, ...] = ()  # what the advantages come from (`scale_rewards="batch"` rescales them):
    # the group's, every branch's where a part trains only some of them
    truncated: tuple[bool, ...] = ()  # text: each completion cut off at `max_completion_length` before its EOS
    lengths: tuple[int, ...] = ()  # text: each completion's scored tokens (its mask row), for losses over spans
    # the share of the group's branches it trains: R3 counts every branch's image in the images' mean (a stopped
    # branch's with advantage 0), so the images a refine group made weigh made / G
    share: float = 1.0


def spans(rows: int, size: int | None) -> list[slice]:
    """A part's `rows` in the slices it is scored in: all at once (`size` None), or `size` at a time."""
    return [slice(None)] if size is None else [slice(start, start + size) for start in range(0, rows, size)]


@dataclass(frozen=True)
class Rollout:
    """One group's samples, scored: what each update on it needs (`rollout_loss`), the images for the rollout buffer,
    and the rollout's metrics (rewards, the audit)."""

    parts: tuple[Part, ...]
    buffered: list[Buffered]
    metrics: dict[str, float]


def _part(um: Any, kind: str, score: Scores, rewards: Sequence[float | None], config: GRPOConfig,
          truncated: Sequence[bool] = (), rows: Sequence[int] | None = None, lengths: Sequence[int] = ()) -> Part:
    """A part with its advantages (against the whole group's `rewards`; of the branches `rows` where the part trains
    only those) and reference log-probs, span by span as the policy's will be (none when β = 0: the KL term is
    off)."""
    advantage, share = advantages(rewards, config.scale_rewards), 1.0
    if rows is not None:
        advantage, share = advantage[list(rows)], len(rows) / len(rewards)
    part = Part(kind, score, advantage, None, tuple(rewards), tuple(truncated), tuple(lengths), share)
    if config.beta <= 0:
        return part
    with torch.no_grad(), um.adapters_disabled():
        return replace(part, reference=tuple(score(span)[0] for span in spans(len(advantage),
                                                                                config.micro_batch_size)))


def batch_scale(rollouts: Sequence[Rollout], rewards: dict[str, list[float | None]]) -> list[Rollout]:
    """The rollouts with every part's advantages divided by the std of `rewards[kind]`, the step's every reward of
    its kind (every process's groups): TRL's `scale_rewards="batch"`."""
    return [replace(rollout, parts=tuple(replace(part, advantage=batch_scaled(part.advantage, rewards[part.kind]))
                                         for part in rollout.parts)) for rollout in rollouts]


def _every_token(logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An image's log-probs with its mask: every one of its N tokens is trained."""
    return logprobs, torch.ones_like(logprobs, dtype=torch.bool)


def rollout_loss(rollout: Rollout, config: GRPOConfig, old: Sequence[Sequence[torch.Tensor]] | None = None,
                 divisor: float = 1) -> tuple[float, list[list[torch.Tensor]], dict[str, float]]:
    """One update's GRPO loss on a group's rollout, back-propagated ÷ `divisor` (the step's groups); the log-probs of
    the policy that sampled it (`old`, per part and span: None at the first update, where they are the policy's own,
    returned for the next ones); and the update's metrics (TRL's `kl` when β > 0; `entropy` and `clip_ratio/*` over
    the group's trained tokens, a refine group's reflection and image tokens together, and `entropy/text` and
    `entropy/image` over each kind's own, since a reflection's few tokens are otherwise lost among its image's;
    `completions/mean_length` (tokens scored: an EOS where sampled) and `completions/clipped_ratio` of the
    reflections, the latter the share the decoder cut off at `max_completion_length` before an EOS; with
    `mask_truncated_completions` those reflections are left out of the loss and of the per-token metrics, as in TRL,
    while the image made from one still trains).

    The loss is a sum over rows, so with `micro_batch_size` each span of a part is scored and back-propagated with its
    share of the whole group's loss (the group's totals in its denominators), and only one span's activations are held
    at a time: the same gradient up to rounding. Without it the group's parts are back-propagated together."""
    whole = config.micro_batch_size is None
    pending: Any = 0.0  # the group's loss, when back-propagated together
    loss = 0.0
    olds: list[list[torch.Tensor]] = []
    kls = []
    low = high = 0.0
    entropies: dict[str, list[float]] = {}  # per kind: summed entropy, tokens
    metrics: dict[str, float] = {}
    clip = (config.epsilon, config.epsilon_high or config.epsilon)  # the ratio's range
    for i, part in enumerate(rollout.parts):
        clipped = torch.tensor(part.truncated, dtype=torch.bool)
        rows, trained = len(part.advantage), None  # the group's totals a span's loss is divided by
        if part.kind == "text" and not whole:
            if len(part.lengths) != rows:
                raise ValueError("a reflection part scored in spans needs each row's token count (`lengths`)")
            masked = clipped.tolist() if config.mask_truncated_completions else [False] * rows
            trained = sum(n for n, out in zip(part.lengths, masked, strict=True) if not out)
        lengths, kl_sum, kl_count, spans_old = [], 0.0, 0.0, []
        kind_sums = entropies.setdefault(part.kind, [0.0, 0.0])
        for j, span in enumerate(spans(rows, config.micro_batch_size)):
            with token_entropies() as seen:
                logprobs, mask = part.score(span)
            if part.kind == "text":
                lengths.append(mask.sum(dim=-1))  # each reflection's sampled tokens, its EOS where it sampled one
                if config.mask_truncated_completions:  # TRL's: a cut-off reflection trains nothing
                    mask = mask & ~clipped[span].to(mask.device).unsqueeze(-1)
            kind_sums[0] += float(torch.where(mask, torch.cat(seen), 0.0).sum())  # (a scorer may score in row chunks)
            kind_sums[1] += float(mask.sum())
            before = logprobs.detach() if old is None else old[i][j]
            reference = None if part.reference is None else part.reference[j]
            if part.kind == "text":
                out = token_loss(logprobs, before, reference, mask, part.advantage[span], *clip, config.beta)
                term = text_loss(out.loss, mask, config.loss_type, config.max_completion_length, None if whole else
                                 rows, trained)
                kl_count = kl_count + mask.sum()
            else:
                # (the clipped term is linear in the advantage: weighting it weights the policy term alone, as R3 does)
                out = image_token_loss(logprobs, before, reference, part.advantage[span] * config.image_loss_weight,
                                       *clip, config.beta)
                term = part.share * image_loss(out.loss, None if whole else rows)
                kl_count = kl_count + out.kl.numel()
            kl_sum = kl_sum + out.kl.detach().sum()
            if whole:
                pending = pending + term
            else:
                (term / divisor).backward()
                loss += float(term.detach())
            spans_old.append(before)
            low, high = low + float(out.low_clipped.sum()), high + float(out.high_clipped.sum())
        if part.kind == "text":
            metrics["completions/mean_length"] = float(torch.cat(lengths).float().mean())
            metrics["completions/clipped_ratio"] = float(clipped.float().mean())
            kls.append(float(kl_sum / kl_count.clamp(min=1)))
        else:
            kls.append(float(kl_sum / kl_count))
        olds.append(spans_old)
    if whole:
        (pending / divisor).backward()
        loss = float(pending.detach())
    if config.beta > 0:  # (TRL logs `kl` only when it is in the loss)
        metrics["kl"] = float(np.mean(kls))  # the text's and the images' estimates, averaged
    tokens = sum(count for _, count in entropies.values())
    per_token = {"entropy": sum(total for total, _ in entropies.values()), "clip_ratio/low_mean": low,
                 "clip_ratio/high_mean": high, "clip_ratio/region_mean": low + high}
    metrics |= {key: total / max(tokens, 1.0) for key, total in per_token.items()}
    metrics |= {f"entropy/{kind}": total / count for kind, (total, count) in entropies.items() if count}
    return loss, olds, metrics


def reward_key(name: str) -> str:
    """A reward's name in the logged `rewards/<name>/mean|std` (TRL names the column after the reward function):
    the verifier's graded `image_score`, or the judge's kind (`self-pyes`, `clip`, `vlm`; a directory is no key)."""
    return "image_score" if name == VERIFIER_REWARD else name.split(":")[0]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value) of a group's rewards."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _reward_stats(prefix: str, values: list[float]) -> dict[str, float]:
    mean, std = _mean_std(values)
    return {f"{prefix}/mean": mean, f"{prefix}/std": std}


def _group_stats(rewards: list[float]) -> dict[str, float]:
    mean, std = _mean_std(rewards)
    return {"reward": mean, "reward_std": std,  # (TRL's isclose: rewards in thirds spread by rounding alone)
            "frac_reward_zero_std": float(np.isclose(std, 0.0, rtol=0.0, atol=1e-8))}


def generation_group(um: Any, index: int, spec: PromptSpec, config: GRPOConfig, seed: int,
                     reward: Reward) -> Rollout:
    """Generate G images of one prompt: one trained part, the images (image reward only)."""
    g, cfg = config.num_generations, config.cfg_scale
    with torch.no_grad():
        tokens = um.generate_images([spec.text], g, cfg, config.temperature, seed).cpu()
        images = um.decode_tokens(tokens)
        scores = reward.score(um, images, spec)
    prompts = [spec.text] * g
    part = _part(um, "image", lambda rows=slice(None): _every_token(um.image_token_logprobs(  # [G, N]
        prompts[rows], tokens[rows], cfg, temperature=config.temperature)), scores, config)
    metrics = {f"generate/{k}": v for k, v in _group_stats(scores).items()}
    metrics |= _reward_stats(f"generate/rewards/{reward_key(reward.name)}", scores)
    if reward.name not in VERIFIER_REWARDS:  # the independent check: how often the verifier passes what the reward pays
        audit = get_judge(VERIFIER_REWARD).fn(um, images, [spec] * len(images))  # 1.0 where it is satisfied
        metrics["generate/audit/verifier_accuracy"] = float(np.mean(audit))
        accepted = [ok for ok, score in zip(audit, scores, strict=True) if reward.perfect(score)]
        if accepted:
            metrics["generate/audit/precision"] = float(np.mean(accepted))
    return Rollout((part,), [Buffered(index, tuple(row), s) for row, s in zip(tokens.tolist(), scores, strict=True)],
                   metrics)


def refine_group(um: Any, start: Buffered, spec: PromptSpec, config: GRPOConfig, seed: int,
                 reward: Reward) -> Rollout:
    """G reflect (+ refine) branches from one buffered image: the reflections and the images made are the trained
    parts (text and image rewards). Its images are not buffered: refine steps start from generation steps' images."""
    g, cfg, guidance = config.num_generations, config.cfg_scale, config.edit_guidance
    edit = um.supports_editing
    question = um.prompts.reflect_question(spec.text)  # `reflect`'s, in a fresh context
    with torch.no_grad():
        image = um.decode_tokens(torch.tensor([start.tokens]))[0]
        notes, sampled, finished = um.sample_answers([image] * g, [question] * g, config.max_completion_length,
                                                     config.temperature, seed)
    stopped = [parse_reflection(note).stop for note in notes]
    format_ok = [acted_on(note, edit) for note in notes]
    making = [i for i in range(g) if not stopped[i] and format_ok[i]]
    new_scores: list[float | None] = [None] * g
    tokens = torch.zeros((0, um.num_image_tokens), dtype=torch.long)
    if making:
        with torch.no_grad():
            if edit:
                tokens = um.edit([image] * len(making), [notes[i] for i in making], guidance.text, config.temperature,
                                 seed + 1, guidance.image)
            else:
                tokens = um.generate_images([refined_prompt(spec.text, notes[i]) for i in making], 1, cfg,
                                            config.temperature, seed + 1)
        tokens = tokens.cpu()
        with torch.no_grad():
            scored = reward.score(um, um.decode_tokens(tokens), spec)
        for i, score in zip(making, scored, strict=True):
            new_scores[i] = score
    deltas, text_rewards, image_rewards = refine_rewards([start.score] * g, new_scores, stopped, format_ok,
                                                         [reward.perfect(start.score)] * g)
    # text: every branch's reflection, as sampled
    parts = [_part(um, "text", lambda rows=slice(None): um.answer_token_logprobs(
        [image] * len(sampled[rows]), [question] * len(sampled[rows]), sampled[rows], config.temperature),
        text_rewards, config, [not done for done in finished], lengths=[len(ids) for ids in sampled])]
    if making:  # images: the branches that made one; zero advantage elsewhere
        if edit:
            sources, instructions = [image] * len(making), [notes[i] for i in making]
            score_images = lambda rows=slice(None): _every_token(um.edit_token_logprobs(  # noqa: E731
                sources[rows], instructions[rows], tokens[rows], guidance.text, image_cfg_scale=guidance.image,
                temperature=config.temperature))
        else:
            refined = [refined_prompt(spec.text, notes[i]) for i in making]
            score_images = lambda rows=slice(None): _every_token(um.image_token_logprobs(  # noqa: E731
                refined[rows], tokens[rows], cfg, temperature=config.temperature))
        parts.append(_part(um, "image", score_images, image_rewards, config, rows=making))
    metrics = {f"refine/{k}": v for k, v in _group_stats(text_rewards).items()}
    metrics |= _reward_stats("refine/rewards/format", format_ok) | _reward_stats("refine/rewards/delta", deltas)
    metrics["refine/stop_rate"] = float(np.mean(stopped))
    made_scores = [s for s in new_scores if s is not None]
    if made_scores:  # (its mean over the step is per image, as TRL's: a group weighs by the images it made)
        made = f"refine/rewards/{reward_key(reward.name)}"
        metrics |= _reward_stats(made, made_scores) | {f"{WEIGHT}{made}/mean": float(len(made_scores))}
    return Rollout(tuple(parts), [], metrics)
