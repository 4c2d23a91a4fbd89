"""How ρ = ‖g_U‖/‖g_G‖ follows the understanding target length (SPEC §1: summed, unnormalised
log-probs are *why* the magnitudes differ).

Probes: for each seeded ShapeWorld scene, two understanding pairs on the same image — a one-word answer
(colour, shape, size, count or existence question; rejected = another answer of the same kind) and the
full-sentence `describe` answer (rejected = the description of an independent random scene, so chosen and
rejected differ along the whole sentence as two sampled answers would). Each probe's und gradient norm is
divided by the gen gradient norm of a batch of the main run, and per condition the mean ρ is set against
the mean token ratio T/N (answer tokens / image tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from unigap.diagnose.gradients import LossFn, ParameterSet, task_gradient
from unigap.diagnose.stats import NONNEGATIVE, finite, summary
from unigap.model import UnifiedModel
from unigap.train.dpo import UnderstandingPair, reference_logprobs
from unigap.world import COLORS, DEFAULT_CANVAS, SHAPES, SIZES, candidate_questions, describe, render, sample_scene
from unigap.world.prompts import NUMBER_WORDS
from unigap.world.questions import sample_question

SHORT, LONG = "short", "describe"
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "size": SIZES,
    "count": NUMBER_WORDS,
    "exists": ("yes", "no"),
}


@dataclass(frozen=True)
class LengthProbe:
    """One image with a (question, chosen, rejected) triple per condition."""

    image: np.ndarray
    triples: dict[str, tuple[str, str, str]]


def length_probes(n: int, seed: int, canvas: int = DEFAULT_CANVAS) -> list[LengthProbe]:
    """n seeded probes (see module docstring)."""
    rng = np.random.default_rng([seed, 6])
    probes = []
    for _ in range(n):
        scene = sample_scene(rng, canvas)
        kinds = [k for k in ANSWER_SETS if candidate_questions(scene, k)]
        question = sample_question(scene, rng, kinds[rng.integers(len(kinds))])
        wrong = [a for a in ANSWER_SETS[question.kind] if a != question.answer]
        (description,) = candidate_questions(scene, "describe")
        rejected = description.answer
        while rejected == description.answer:
            rejected = describe(sample_scene(rng, canvas))
        probes.append(
            LengthProbe(
                render(scene),
                {
                    SHORT: (question.text, question.answer, wrong[rng.integers(len(wrong))]),
                    LONG: (description.text, description.answer, rejected),
                },
            )
        )
    return probes


def understanding_pairs(
    um: UnifiedModel, images: Sequence[np.ndarray], triples: Sequence[tuple[str, str, str]]
) -> list[UnderstandingPair]:
    """(question, chosen, rejected) per image as DPO pairs, with reference log-probs and token counts
    from `um`'s base model."""
    raw = [UnderstandingPair(image, *triple, 0.0, 0.0, 0, 0) for image, triple in zip(images, triples, strict=True)]
    ref_c, ref_r, n_c, n_r = reference_logprobs(um, raw)
    return [
        replace(pair, ref_chosen=float(rc), ref_rejected=float(rr), chosen_tokens=int(nc), rejected_tokens=int(nr))
        for pair, rc, rr, nc, nr in zip(raw, ref_c.tolist(), ref_r.tolist(), n_c.tolist(), n_r.tolist(), strict=True)
    ]


def probe_pairs(um: UnifiedModel, probes: Sequence[LengthProbe]) -> dict[str, list[UnderstandingPair]]:
    """The probes as DPO pairs per condition."""
    images = [p.image for p in probes]
    return {c: understanding_pairs(um, images, [p.triples[c] for p in probes]) for c in (SHORT, LONG)}


def gradient_norm(um: UnifiedModel, params: ParameterSet, loss_fn: LossFn, pair: Any) -> float:
    """‖d loss/d params‖ over the whole parameter set."""
    grads = task_gradient(loss_fn(um, pair), params)
    return math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads))


def usable_norms(norms: Sequence[float | None]) -> np.ndarray:
    """The generation gradient norms ρ can divide by: finite and non-zero (null, an overflowed one, is neither)."""
    gen = np.asarray(norms, dtype=np.float64)  # (None reads as NaN)
    return gen[np.isfinite(gen) & (gen > 0)]


def length_response(
    und_norms: dict[str, Sequence[float]],
    und_tokens: dict[str, Sequence[float]],
    gen_norms: Sequence[float],
    gen_tokens: float,
) -> dict[str, Any]:
    """Per condition: ρ and T/N; across them: the exponent k in ρ ∝ (T/N)^k, from the two condition
    means and from a log-log fit over every probe (with Pearson r on the logs and Spearman's rank r)."""
    gen = usable_norms(gen_norms)
    if len(gen) == 0:
        raise ValueError("every generation gradient is zero or non-finite: ρ is undefined")
    conditions: dict[str, Any] = {}
    all_rho, all_ratio = [], []
    for name, norms in und_norms.items():
        rho = np.asarray(norms, dtype=np.float64) / gen[np.arange(len(norms)) % len(gen)]
        ratio = np.asarray(und_tokens[name], dtype=np.float64) / gen_tokens
        conditions[name] = {
            **summary(rho, "ratio", NONNEGATIVE),
            **summary(ratio, "token_ratio", NONNEGATIVE),
            # (an overflowed probe: null)
            "samples": {"ratio": [finite(v) for v in rho], "token_ratio": [finite(v) for v in ratio]},
        }
        all_rho.append(rho)
        all_ratio.append(ratio)
    rho, ratio = np.concatenate(all_rho), np.concatenate(all_ratio)
    out: dict[str, Any] = {"conditions": conditions, "gen_tokens": gen_tokens}
    means = [(c["ratio_mean"], c["token_ratio_mean"]) for c in conditions.values()]
    if len(means) == 2 and means[0][1] != means[1][1] and all(m[0] for m in means):
        (rho_a, t_a), (rho_b, t_b) = means
        out["exponent_from_means"] = finite(math.log(rho_b / rho_a) / math.log(t_b / t_a))
    defined = np.isfinite(rho) & (rho > 0)
    if len(set(ratio[defined])) > 1:
        x, y = np.log(ratio[defined]), np.log(rho[defined])
        slope, _ = np.polyfit(x, y, 1)
        out["loglog_slope"] = finite(slope)
        out["loglog_pearson_r"] = finite(stats.pearsonr(x, y).statistic)
        out["spearman_r"] = finite(stats.spearmanr(ratio[defined], rho[defined]).statistic)
    return out


def run_sweep(
    um: UnifiedModel,
    params: ParameterSet,
    pairs: dict[str, Sequence[UnderstandingPair]],
    loss_fn: LossFn,
    gen_norms: Sequence[float],
    gen_tokens: float,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Und gradient norms of every probe pair, then `length_response`; `progress()` after each pair."""
    norms: dict[str, list[float]] = {}
    for condition, condition_pairs in pairs.items():
        norms[condition] = []
        for pair in condition_pairs:
            norms[condition].append(gradient_norm(um, params, loss_fn, pair))
            if progress is not None:
                progress()
    tokens = {c: [(p.chosen_tokens + p.rejected_tokens) / 2 for p in ps] for c, ps in pairs.items()}
    return length_response(norms, tokens, gen_norms, gen_tokens)
