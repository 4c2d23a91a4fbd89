"""Per-round metrics of the refine loop, as R3 logs them, with n and 95% intervals; and the best-of-N baseline.

* `rounds[r].accuracy`: the verifier's accuracy over all n prompts after round r (round 0 = one-shot; stopped
  prompts carry their last image forward).
* `rounds[r].improved / worse / unchanged` (r >= 1): among the prompts refined in round r, the share whose image
  went from rejected to accepted, from accepted to rejected, or kept its verdict.
* `rounds[r].stopped`: prompts whose reflection said stop in round r; `format_failures` likewise.
* `stop`: the share of prompts that stopped at all and the mean round they stopped in; the stop decisions
  (every reflection) split into stopped on an accepted image (right), stopped on a rejected one, and went on past
  an accepted one.
* `gain`: the final accuracy minus round 0, paired per prompt (`delta`, its 95% t-interval and paired-test p).
* with another independent judge (`--judge clip:DIR`): `judged_rounds` and `best_of_n.judged`, the accuracy by
  that judge of the same images (the loop itself, and the oracle, still read the verifier).

Intervals are Wald intervals, value ± 1.96 · stderr (`unigap.evaluate.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from unigap.evaluate.generation import batch_seed, self_p_yes
from unigap.evaluate.progress import map_items
from unigap.evaluate.stats import paired_difference, summarize, summarize_grouped, with_ci
from unigap.refine.loop import Refinable, Trajectory
from unigap.world import CATEGORIES, PromptSpec, verify

if TYPE_CHECKING:
    from unigap.evaluate.judges import Judge

BEST_OF_N_STREAM = 8


def round_metrics(trajectories: Sequence[Trajectory], rounds: int) -> list[dict[str, Any]]:
    """One entry per round 0..rounds (see the module docstring)."""
    out = []
    for round_ in range(rounds + 1):
        rows = [{"category": t.spec.category, "verified": t.verdict_after(round_)} for t in trajectories]
        entry = {"round": round_, **with_ci(summarize_grouped(rows, "verified", "accuracy", "category", CATEGORIES,
                                                              "by_category"), "accuracy")}
        refined = [t for t in trajectories if len(t.verified) > round_] if round_ else []
        changes = [(t.verified[round_ - 1], t.verified[round_]) for t in refined]
        entry.update(  # (round 0 generates: nothing refined or stopped yet, the changes undefined)
            refined=len(refined),
            improved=with_ci(summarize([not a and b for a, b in changes], "rate"), "rate") if round_ else None,
            worse=with_ci(summarize([a and not b for a, b in changes], "rate"), "rate") if round_ else None,
            unchanged=with_ci(summarize([a == b for a, b in changes], "rate"), "rate") if round_ else None,
            stopped=sum(t.stop_round == round_ for t in trajectories),
            format_failures=sum(t.format_failure_round == round_ for t in trajectories),
        )
        out.append(entry)
    return out


def stop_metrics(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """How often and when prompts stop, and whether each stop decision was right."""
    decisions = []  # (stopped, image accepted) for every reflection asked
    for t in trajectories:
        for note_round in range(1, len(t.reflections) + 1):
            decisions.append((t.stop_round == note_round, t.verified[note_round - 1]))
    stopped = [t.stop_round for t in trajectories if t.stop_round is not None]
    return {
        "rate": with_ci(summarize([t.stop_round is not None for t in trajectories], "rate"), "rate"),
        "mean_round": summarize(stopped, "mean"),
        "decisions": len(decisions),
        "stopped_on_correct": with_ci(summarize([s and ok for s, ok in decisions], "rate"), "rate"),
        "stopped_on_wrong": with_ci(summarize([s and not ok for s, ok in decisions], "rate"), "rate"),
        "went_on_past_correct": with_ci(summarize([not s and ok for s, ok in decisions], "rate"), "rate"),
    }


def gain(trajectories: Sequence[Trajectory], rounds: int) -> dict[str, Any]:
    """Final minus one-shot accuracy, paired per prompt."""
    return paired_difference([t.verdict_after(0) for t in trajectories],
                             [t.verdict_after(rounds) for t in trajectories])


def best_of_n_images(
    um: Refinable, specs: Sequence[PromptSpec], n: int, seed: int, cfg_scale: float | None, temperature: float,
    batch_size: int, progress: bool,
) -> list[Image.Image]:
    """The honest baseline at the loop's budget: n samples per prompt, the self-judge keeps the one it rates
    highest (P(yes)); one image per prompt."""
    def batch(index: int, chunk: list[PromptSpec]) -> list[Image.Image]:
        tokens = um.generate_images([s.text for s in chunk], n, cfg_scale, temperature,
                                    batch_seed(seed, BEST_OF_N_STREAM * 1000 + index))
        images = um.decode_tokens(tokens)
        p_yes = torch.tensor(self_p_yes(um, images, [s.text for s in chunk for _ in range(n)])).view(len(chunk), n)
        return [images[row * n + int(p_yes[row].argmax())] for row in range(len(chunk))]

    return map_items(specs, max(1, batch_size // n), batch, f"best of {n}", progress)


def best_of_n(
    um: Refinable, specs: Sequence[PromptSpec], n: int, seed: int, cfg_scale: float | None, temperature: float,
    batch_size: int, progress: bool, judge: Judge | None = None,
) -> dict[str, Any]:
    """The verifier's accuracy on `best_of_n_images`; with `judge`, that judge's accuracy too (`judged`)."""
    images = best_of_n_images(um, specs, n, seed, cfg_scale, temperature, batch_size, progress)
    rows = [{"category": spec.category, "verified": verify(image, spec, canvas=image.size[0]).satisfied}
            for spec, image in zip(specs, images, strict=True)]
    metric = summarize_grouped(rows, "verified", "accuracy", "category", CATEGORIES, "by_category")
    out = {"n_samples": n, **with_ci(metric, "accuracy")}
    if judge is not None:
        out["judged"] = judged_accuracy(specs, judge_verdicts(judge, um, specs, images))
    return out


def judge_verdicts(judge: Judge, um: Any, specs: Sequence[PromptSpec],
                   images: Sequence[Image.Image]) -> list[bool | None]:
    """The judge's accept (score >= its threshold) per image; None where it cannot decide."""
    return [judge.accepts(score) for score in judge.fn(um, images, specs)]


def judged_accuracy(specs: Sequence[PromptSpec], verdicts: Sequence[bool | None]) -> dict[str, Any]:
    """Accuracy by a judge's verdicts, overall and per category, over the images it decided."""
    rows = [{"category": spec.category, "accepted": verdict}
            for spec, verdict in zip(specs, verdicts, strict=True) if verdict is not None]
    return with_ci(summarize_grouped(rows, "accepted", "accuracy", "category", CATEGORIES, "by_category"), "accuracy")


def judged_rounds(judge: Judge, um: Any, trajectories: Sequence[Trajectory], rounds: int) -> list[dict[str, Any]]:
    """The judge's accuracy after each round 0..rounds (stopped prompts carry their last image forward); every
    image is judged once."""
    flat = [(t.spec, image) for t in trajectories for image in t.images]
    verdicts = iter(judge_verdicts(judge, um, [spec for spec, _ in flat], [image for _, image in flat]))
    per_prompt = [[next(verdicts) for _ in t.images] for t in trajectories]
    specs = [t.spec for t in trajectories]
    return [{"round": round_, **judged_accuracy(specs, [v[min(round_, len(v) - 1)] for v in per_prompt])}
            for round_ in range(rounds + 1)]
