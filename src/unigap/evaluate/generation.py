"""Generation accuracy and the model's judgement of its own images (the self-contradiction metrics).

Why together: non-unification, weak generation and judge accuracy are statements about *the same*
images whose verifier verdicts give generation accuracy (SPEC §2), so each image is generated, decoded,
verified and self-judged exactly once and every metric reads the same per-image record.

* generation accuracy   = share of images the exact verifier accepts
* non-unification score = share of images the model's own judge rejects (P(yes) < 0.5)
* weak-generation rate  = among self-rejected images, share the verifier rejects too
* judge accuracy        = share of images where the self-judge verdict equals the verifier's

With another independent judge (`unigap eval --judge clip:DIR`), `judged_generation` adds generation accuracy by
that judge, read from the same images, next to the verifier's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from unigap.evaluate.progress import map_batches
from unigap.evaluate.stats import SHARE, summarize_grouped, summarize_mean
from unigap.model.generation import CFG_SCALE
from unigap.world import CATEGORIES, PromptSpec, verify

if TYPE_CHECKING:
    from unigap.evaluate.judges import Judge

GENERATION_STREAM = 2  # per-batch sampling seeds are drawn from this stream of the run's seed
ACCEPT_THRESHOLD = 0.5  # the self-judge accepts an image when P(yes) >= this


class ImageModel(Protocol):
    def generate_images(
        self, prompts: Sequence[str], n_per_prompt: int, cfg_scale: float | None, temperature: float, seed: int | None
    ) -> torch.Tensor: ...

    def decode_tokens(self, ids: torch.Tensor) -> list[Image.Image]: ...

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor: ...


def batch_seed(seed: int, batch_index: int) -> int:
    """The sampling seed of one batch: a fixed function of (run seed, batch index)."""
    return int(np.random.SeedSequence([seed, GENERATION_STREAM, batch_index]).generate_state(1)[0])


def stream_seed(seed: int, stream: int, index: int, round_: int | None = None) -> int:
    """The sampling seed of batch `index` (of round `round_`) in `stream` of a run: self-improvement's pool, refine's
    rounds, best-of-N. Keys that fit the packing `stream·1000 + round·100 + index` (index < 100 and round < 10; index
    < 1000 without rounds) keep the seeds that recorded results were sampled with; a larger key, which the packing
    would land on another round's or stream's, is hashed apart (each entry ≥ 1: SeedSequence ignores trailing 0s)."""
    if round_ is None:
        if index < 1000:
            return batch_seed(seed, stream * 1000 + index)
        keys = [stream, index + 1]
    else:
        if index < 100 and round_ < 10:
            return batch_seed(seed, stream * 1000 + round_ * 100 + index)
        keys = [stream, round_ + 1, index + 1]
    return int(np.random.SeedSequence([seed, GENERATION_STREAM, *keys]).generate_state(1)[0])


def generate_and_judge(
    um: ImageModel,
    specs: Sequence[PromptSpec],
    seed: int,
    batch_size: int = 32,
    cfg_scale: float | None = CFG_SCALE,
    temperature: float = 1.0,
    progress: bool = True,
) -> tuple[list[Image.Image], list[dict[str, Any]]]:
    """One image per prompt, verified and self-judged → (images, per-image records).

    Batch b is sampled with `batch_seed(seed, b)`, so the images depend on (seed, batch_size) only (and not on the
    number of processes: `map_batches`).
    """

    def batch(index: int, chunk: list[PromptSpec]) -> tuple[list[Image.Image], list[dict[str, Any]]]:
        tokens = um.generate_images([spec.text for spec in chunk], n_per_prompt=1, cfg_scale=cfg_scale,
                                    temperature=temperature, seed=batch_seed(seed, index))
        decoded = um.decode_tokens(tokens)
        return decoded, judge_images(um, chunk, decoded, start=index * batch_size)

    done = map_batches(specs, batch_size, batch, "generation", progress)
    return [im for images, _ in done for im in images], [r for _, records in done for r in records]


def self_p_yes(um: ImageModel, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """The model's own P(yes) for "does this image show <prompt>?", one float per image (its judge's score)."""
    if not images:
        return []
    return torch.as_tensor(um.judge(list(images), list(prompts))).float().cpu().tolist()


def judge_images(um: ImageModel, specs: Sequence[PromptSpec], images: Sequence[Image.Image],
                 start: int = 0) -> list[dict[str, Any]]:
    """One record per image: the verifier's verdict and the model's own judgement (the fields every generation
    metric reads); `index` counts from `start`."""
    p_yes = self_p_yes(um, images, [spec.text for spec in specs])
    records = []
    for spec, image, prob in zip(specs, images, p_yes, strict=True):
        verdict = verify(image, spec, canvas=image.size[0]) if isinstance(spec, PromptSpec) else None
        satisfied = None if verdict is None else verdict.satisfied  # None: free text, the verifier cannot read it
        accepted = prob >= ACCEPT_THRESHOLD
        records.append(
            {
                "index": start + len(records),
                "prompt": spec.text,
                "category": spec.category,
                "verified": satisfied,
                "reason": "free text" if verdict is None else verdict.reason,
                "p_yes": prob,
                "self_accepted": accepted,
                "self_rejected": not accepted,
                "judge_correct": None if satisfied is None else accepted == satisfied,
                "weak_generation": None if accepted or satisfied is None else not satisfied,
            }
        )
    return records


def generation_metrics(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The four generation-side metric objects, each overall and per prompt category."""

    def metric(outcome: str, key: str, rows: Sequence[dict[str, Any]] = records) -> dict[str, Any]:
        """Over the rows with an outcome (the verifier's metrics leave free-text prompts out)."""
        decided = [r for r in rows if r[outcome] is not None]
        return summarize_grouped(decided, outcome, key, "category", CATEGORIES, "by_category")

    rejected = [r for r in records if r["self_rejected"] and r["verified"] is not None]
    return {
        "generation": metric("verified", "accuracy"),
        "nonunification": {
            **metric("self_rejected", "score"),
            "mean_p_yes": summarize_mean([r["p_yes"] for r in records], SHARE),
        },
        "weak_generation": metric("weak_generation", "rate", rejected),
        "judge": metric("judge_correct", "accuracy"),
    }


def judged_generation(judge: Judge, um: ImageModel, specs: Sequence[PromptSpec], images: Sequence[Image.Image],
                      records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Generation accuracy by `judge` (not the verifier) on the evaluated images: each record gains `judge_score`
    and `judge_accepted` (None where the judge cannot decide); the metric holds the mean score too, the judge's
    native scores where it has them (CLIPScore on Hessel et al.'s scale and as 100 · cos), and the weak-generation
    rate by this judge (SPEC §2: of the images the model's own judge rejects, the share this one rejects too: on
    free text, which the verifier cannot read, the only one)."""
    scores = judge.fn(um, images, specs)
    for record, score in zip(records, scores, strict=True):
        record["judge_score"] = score
        record["judge_accepted"] = accepted = judge.accepts(score)
        record["judged_weak_generation"] = None if accepted is None or record["self_accepted"] else not accepted
    decided = [r for r in records if r["judge_accepted"] is not None]
    weak = [r for r in decided if r["judged_weak_generation"] is not None]
    metric = {
        "judge": judge.name,
        **summarize_grouped(decided, "judge_accepted", "accuracy", "category", CATEGORIES, "by_category"),
        "undecided": len(records) - len(decided),
        "mean_score": summarize_mean([r["judge_score"] for r in decided], SHARE),
        "weak_generation": summarize_grouped(weak, "judged_weak_generation", "rate", "category", CATEGORIES,
                                             "by_category"),
    }
    for name, factor in judge.scaled_scores:
        metric[f"mean_{name}"] = summarize_mean([factor * r["judge_score"] for r in decided], (0.0, factor))
    return metric
