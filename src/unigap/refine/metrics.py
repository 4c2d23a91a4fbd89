"""Per-round metrics of the refine loop, as R3 logs them, with n and 95% intervals; and the best-of-N baseline.

* `rounds[r].accuracy`: the verifier's accuracy over the n prompts after round r (round 0 = one-shot; stopped
  prompts carry their last image forward; free-text prompts, which the verifier cannot read, are left out).
* `rounds[r].improved / worse / unchanged` (r >= 1): among the prompts refined in round r, the share whose image
  went from rejected to accepted, from accepted to rejected, or kept its verdict.
* `rounds[r].stopped`: prompts whose reflection said stop in round r; `format_failures` likewise.
* `stop`: the share of prompts that stopped at all and the mean round they stopped in; the stop decisions
  (every reflection) split into stopped on an accepted image (right), stopped on a rejected one, and went on past
  an accepted one.
* `gain`: the final accuracy minus round 0, paired per prompt (`delta`, its 95% t-interval and paired-test p).
* with another independent judge (`--judge clip:DIR`): `judged_part` (rounds, stop and gain by that judge, free-text
  prompts included) and `best_of_n.judged`, from the same images (the loop itself, and the oracle, read the
  verifier).

Intervals: Wilson's for shares (`unigap.evaluate.stats.with_ci`), a t-interval for the gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from unigap.evaluate.data import FreePrompt
from unigap.evaluate.generation import self_p_yes, stream_seed
from unigap.evaluate.judges import JUDGES, Judge
from unigap.evaluate.progress import map_items
from unigap.evaluate.stats import (paired_difference, summarize, summarize_grouped, summarize_mean, with_ci,
                                   with_cis)
from unigap.refine.loop import Refinable, Trajectory, verdict_after
from unigap.world import CATEGORIES, PromptSpec

BEST_OF_N_STREAM = 8


Verdicts = Sequence[Sequence[bool | None]]  # per prompt, one verdict per image it has (None: undecided)


def _decided(trajectories: Sequence[Trajectory], verdicts: Verdicts | None) -> list[tuple[Trajectory, list]]:
    """(trajectory, its verdicts) for the prompts the judge decided every image of (the verifier's default verdicts
    leave free-text prompts out)."""
    verdicts = [t.verified for t in trajectories] if verdicts is None else verdicts
    return [(t, list(v)) for t, v in zip(trajectories, verdicts, strict=True) if None not in v]


def _accuracy_by_category(rows: Sequence[dict[str, Any]], outcome: str) -> dict[str, Any]:
    """Accuracy of `row[outcome]` over the rows and per category, each with n, stderr and its Wilson interval."""
    return with_cis(summarize_grouped(rows, outcome, "accuracy", "category", CATEGORIES, "by_category"))


def _rate(outcomes: Sequence[bool]) -> dict[str, Any]:
    """The share of true outcomes, with n, stderr and its Wilson interval."""
    return with_ci(summarize(outcomes, "rate"), "rate")


def round_metrics(trajectories: Sequence[Trajectory], rounds: int,
                  verdicts: Verdicts | None = None) -> list[dict[str, Any]]:
    """One entry per round 0..rounds (see the module docstring), by the verifier or by `verdicts` (another judge's,
    `judged_part`); `refined`, `stopped` and `format_failures` count every prompt, the rates those decided."""
    decided = _decided(trajectories, verdicts)
    out = []
    for round_ in range(rounds + 1):
        rows = [{"category": t.spec.category, "verified": verdict_after(v, round_)} for t, v in decided]
        entry = {"round": round_, **_accuracy_by_category(rows, "verified")}
        if round_:
            changes = [(v[round_ - 1], v[round_]) for _, v in decided if len(v) > round_]
            entry.update(refined=sum(len(t.images) > round_ for t in trajectories),
                         improved=_rate([not a and b for a, b in changes]),
                         worse=_rate([a and not b for a, b in changes]), unchanged=_rate([a == b for a, b in changes]))
        else:  # round 0 generates: nothing refined yet, the changes undefined
            entry.update(refined=0, improved=None, worse=None, unchanged=None)
        entry.update(stopped=sum(t.stop_round == round_ for t in trajectories),
                     format_failures=sum(t.format_failure_round == round_ for t in trajectories))
        out.append(entry)
    return out


def stop_metrics(trajectories: Sequence[Trajectory], rounds: int, verdicts: Verdicts | None = None) -> dict[str, Any]:
    """How often and when prompts stop (every prompt; `mean_round` with its t-interval, within 1..rounds), and
    whether each stop decision was right (by the verifier, or by `verdicts`, over the prompts decided). A reflection
    outside the grammar under `edit` is no decision: its prompt ends with its image kept, counted as a format
    failure."""
    decisions = []  # (stopped, image accepted) for every reflection that decided
    for t, v in _decided(trajectories, verdicts):
        for note_round in range(1, len(t.reflections) + 1):
            if t.format_failure_round != note_round:  # (a format failure is no decision)
                decisions.append((t.stop_round == note_round, v[note_round - 1]))
    stopped = [t.stop_round for t in trajectories if t.stop_round is not None]
    mean_round = summarize_mean(stopped, (1.0, float(rounds)))  # (one stop: no spread to take an interval from)
    return {
        "rate": _rate([t.stop_round is not None for t in trajectories]),
        "mean_round": mean_round,
        "decisions": len(decisions),
        "stopped_on_correct": _rate([s and ok for s, ok in decisions]),
        "stopped_on_wrong": _rate([s and not ok for s, ok in decisions]),
        "went_on_past_correct": _rate([not s and ok for s, ok in decisions]),
    }


def gain(trajectories: Sequence[Trajectory], rounds: int, verdicts: Verdicts | None = None) -> dict[str, Any]:
    """Final minus one-shot accuracy, paired per prompt (by the verifier, or by `verdicts`)."""
    decided = _decided(trajectories, verdicts)
    return paired_difference([verdict_after(v, 0) for _, v in decided], [verdict_after(v, rounds) for _, v in decided])


def best_of_n_images(
    um: Refinable, specs: Sequence[PromptSpec | FreePrompt], n: int, seed: int, cfg_scale: float | None,
    temperature: float, batch_size: int, progress: bool, first: Sequence[Image.Image] | None = None,
) -> list[Image.Image]:
    """The honest baseline at the loop's budget: n samples per prompt, the self-judge keeps the one it rates
    highest (P(yes)); one image per prompt. `first`, where given, is each prompt's first sample (the one-shot
    image the loop starts from, `run_loop`'s `first`), and n − 1 more are drawn."""
    drawn = n - (first is not None)

    def batch(index: int, chunk: list[tuple[int, PromptSpec | FreePrompt]]) -> list[Image.Image]:
        samples = um.decode_tokens(um.generate_images([s.text for _, s in chunk], drawn, cfg_scale, temperature,
                                                      stream_seed(seed, BEST_OF_N_STREAM, index))) if drawn else []
        images = [image for row, (i, _) in enumerate(chunk) for image in
                  ([] if first is None else [first[i]]) + samples[row * drawn:(row + 1) * drawn]]
        p_yes = torch.tensor(self_p_yes(um, images, [s.text for _, s in chunk for _ in range(n)])).view(len(chunk), n)
        return [images[row * n + int(p_yes[row].argmax())] for row in range(len(chunk))]

    return map_items(list(enumerate(specs)), max(1, batch_size // n), batch, f"best of {n}", progress)


def best_of_n(
    um: Refinable, specs: Sequence[PromptSpec | FreePrompt], n: int, seed: int, cfg_scale: float | None,
    temperature: float, batch_size: int, progress: bool, judge: Judge | None = None,
) -> dict[str, Any]:
    """The verifier's accuracy on `best_of_n_images` (ShapeWorld prompts); with `judge`, that judge's accuracy too
    (`judged`)."""
    images = best_of_n_images(um, specs, n, seed, cfg_scale, temperature, batch_size, progress)
    out = {"n_samples": n, **_accuracy(specs, JUDGES["verifier"].verdicts(um, images, specs))}
    if judge is not None:
        out["judged"] = _accuracy(specs, judge.verdicts(um, images, specs))
    return out


def _accuracy(specs: Sequence[PromptSpec | FreePrompt], verdicts: Sequence[bool | None]) -> dict[str, Any]:
    """Accuracy by a judge's verdicts, overall and per category, over the images it decided."""
    rows = [{"category": spec.category, "accepted": verdict}
            for spec, verdict in zip(specs, verdicts, strict=True) if verdict is not None]
    return _accuracy_by_category(rows, "accepted")


def judged_part(judge: Judge, um: Any, trajectories: Sequence[Trajectory], rounds: int) -> dict[str, Any]:
    """The loop's metrics by another judge (every image judged once): `rounds`, `stop` and `gain` as the verifier's,
    and `verdicts`, one per image of each prompt."""
    flat = [(t.spec, image) for t in trajectories for image in t.images]
    verdicts = iter(judge.verdicts(um, [image for _, image in flat], [spec for spec, _ in flat]))
    per_prompt = [[next(verdicts) for _ in t.images] for t in trajectories]
    return {"rounds": round_metrics(trajectories, rounds, per_prompt),
            "stop": stop_metrics(trajectories, rounds, per_prompt),
            "gain": gain(trajectories, rounds, per_prompt), "verdicts": per_prompt}
