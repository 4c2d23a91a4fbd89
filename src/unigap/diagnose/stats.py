"""Statistics of a `GradientLog`: cosines, norm ratios, calibration tests, per layer and per module.

Everything is computed from per-tensor sums (see `gradients`), so a group of tensors is just a mask.
A group whose gradients are exactly zero (lora_A at step 0 under PEFT's B = 0 init) is reported as
`{"zero_gradient": true}`; a cosine with a zero-norm or non-finite side is undefined and counted, never NaN, and a
summary leaves out (and counts) values that overflowed. The JSON therefore never holds NaN or infinity: undefined
values are null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from unigap.diagnose.gradients import GradientLog
from unigap.evaluate.stats import SHARE, UNBOUNDED, finite, t_interval, welch


COSINE = (-1.0, 1.0)  # the range of a quantity, to which its interval is cut (`t_interval`)
NONNEGATIVE = (0.0, math.inf)


def summary(values: Sequence[float] | np.ndarray, prefix: str,
            bounds: tuple[float, float] = UNBOUNDED) -> dict[str, Any]:
    """`{prefix}_mean/_std/_ci95/_median/_min/_max/_n`: std is the sample std (ddof 1), ci95 the t-interval
    of the mean, cut to the quantity's `bounds` (a cosine's interval does not reach past 1, nor a ratio's below 0);
    both null below two values. Non-finite values (a batch that overflowed) are left out, and counted in
    `{prefix}_nonfinite` where there are any."""
    x = np.asarray(values, dtype=np.float64)
    kept = np.isfinite(x)
    x, dropped = x[kept], int((~kept).sum())
    n = len(x)
    out: dict[str, Any] = {f"{prefix}_n": n} | ({f"{prefix}_nonfinite": dropped} if dropped else {})
    if n == 0:
        return out | {f"{prefix}_{k}": None for k in ("mean", "std", "ci95", "median", "min", "max")}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    ci = [finite(bound) for bound in t_interval(mean, std / math.sqrt(n), n - 1, bounds=bounds)] if n > 1 else [None]
    return out | {
        f"{prefix}_mean": mean,
        f"{prefix}_std": finite(std),
        f"{prefix}_ci95": ci if None not in ci else None,
        f"{prefix}_median": float(np.median(x)),
        f"{prefix}_min": float(x.min()),
        f"{prefix}_max": float(x.max()),
    }


def cosines(triples: np.ndarray) -> tuple[np.ndarray, int]:
    """Cosines of rows [‖a‖², ‖b‖², ⟨a, b⟩] where both norms are non-zero and all three finite, and how many were
    undefined."""
    defined = (triples[:, 0] > 0) & (triples[:, 1] > 0) & np.isfinite(triples).all(axis=1)
    t = triples[defined]
    return t[:, 2] / np.sqrt(t[:, 0] * t[:, 1]), int((~defined).sum())


def ratios(triples: np.ndarray) -> np.ndarray:
    """ρ = ‖a‖ / ‖b‖ where ‖b‖ > 0 and both are finite."""
    t = triples[(triples[:, 1] > 0) & np.isfinite(triples[:, :2]).all(axis=1)]
    return np.sqrt(t[:, 0] / t[:, 1])


def group_summary(triples: np.ndarray) -> dict[str, Any]:
    """Inter-task cosine, ρ (with its coefficient of variation) and norms of one tensor group, per batch."""
    if not triples[:, :2].any():
        return {"zero_gradient": True}
    cos, undefined = cosines(triples)
    rho = ratios(triples)
    cv = finite(np.std(rho, ddof=1) / np.mean(rho)) if len(rho) > 1 and np.mean(rho) > 0 else None
    return {
        "zero_gradient": False,
        **summary(cos, "cos", COSINE),
        "cos_undefined": undefined,
        **summary(rho, "ratio", NONNEGATIVE),
        "ratio_cv": cv,
        **summary(np.sqrt(triples[:, 0]), "und_norm", NONNEGATIVE),
        **summary(np.sqrt(triples[:, 1]), "gen_norm", NONNEGATIVE),
    }


def _masked(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum the per-tensor triples over the tensors in `mask` → [rows, 3]."""
    return array[:, mask, :].sum(axis=1)


def per_group(log: GradientLog) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per layer (whole layer, each factor, each module kind) and per factor / module kind overall."""
    params = log.params
    inter = log.array("inter")
    layers, factors, modules = (np.array(v, dtype=object) for v in (params.layers, params.factors, params.modules))

    def by(values: np.ndarray, within: np.ndarray) -> dict[str, Any]:
        return {str(v): group_summary(_masked(inter, within & (values == v))) for v in sorted(set(values[within]))}

    everything = np.ones(len(params.names), dtype=bool)
    per_layer = []
    for layer in sorted({v for v in params.layers if v is not None}):
        mask = layers == layer
        per_layer.append(
            {
                "layer": layer,
                **group_summary(_masked(inter, mask)),
                "factors": by(factors, mask),
                "modules": by(modules, mask),
            }
        )
    return per_layer, {"factors": by(factors, everything), "modules": by(modules, everything)}


EXACT_LAYERS = 8  # up to this many layers the trend's p is exact over every ordering (8! = 40,320)


def depth_trend(per_layer: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman correlation of the per-layer mean cosine with depth (the paper saw no trend). Its p is two-sided and,
    over a few layers, exact over the orderings: scipy's t-approximation gave a monotone 4-layer profile p 0, where
    the least 4 layers can give is 1/12."""
    points = [(row["layer"], row["cos_mean"]) for row in per_layer if row.get("cos_mean") is not None]
    if len(points) < 3 or len({c for _, c in points}) < 2:
        return {"spearman_r": None, "p": None, "layers": len(points)}
    layers, cosines = zip(*points, strict=True)
    result = stats.spearmanr(layers, cosines)
    p = result.pvalue
    if len(points) <= EXACT_LAYERS:
        depth = stats.rankdata(layers) - (len(layers) + 1) / 2  # (distinct layers: centred ranks)

        def rho(y: np.ndarray, axis: int = -1) -> np.ndarray:  # Spearman's ρ of each ordering, all at once
            ranks = stats.rankdata(y, axis=axis)
            ranks = ranks - ranks.mean(axis=axis, keepdims=True)
            return (depth * ranks).sum(axis=axis) / np.sqrt((depth**2).sum() * (ranks**2).sum(axis=axis))

        p = stats.permutation_test((np.asarray(cosines),), rho, permutation_type="pairings", vectorized=True,
                                   n_resamples=math.inf).pvalue
    return {"spearman_r": finite(result.statistic), "p": finite(p), "layers": len(points)}


def norm_change(triples: np.ndarray) -> dict[str, Any]:
    """SPEC Eq. 7: adding g_U to g_G changes the update norm by ½ρ² when cos = 0.

    Measured: ‖g_U + g_G‖ / ‖g_G‖ − 1, exact since the joint gradient is the sum of the task gradients
    (‖g_U + g_G‖² = ‖g_U‖² + ‖g_G‖² + 2⟨g_U, g_G⟩). The orthogonal value √(1+ρ²) − 1 is what ½ρ²
    approximates; the gap measured − orthogonal is the cosine's share (≈ ρ·cos).
    """
    t = triples[triples[:, 1] > 0]
    uu, gg, ug = t[:, 0], t[:, 1], t[:, 2]
    rho2 = uu / gg
    measured = np.sqrt(np.maximum(uu + gg + 2 * ug, 0.0) / gg) - 1
    predicted = rho2 / 2
    return {
        **summary(predicted, "predicted_half_rho2", NONNEGATIVE),
        **summary(np.sqrt(1 + rho2) - 1, "orthogonal", NONNEGATIVE),
        **summary(measured, "measured", (-1.0, math.inf)),
        **summary(measured - predicted, "error"),
    }


def weighting(triples: np.ndarray, und_tokens: Sequence[float], gen_tokens: Sequence[float]) -> dict[str, Any]:
    """The w_U that gradient-weighted DPO would set, ‖g_G‖/(‖g_U‖+‖g_G‖), per batch; next to the
    length-normalised weight N/(N+T) from the mean token counts of the batches' pairs (SPEC §1 strategies 5 and 6;
    the `length-norm` strategy averages its whole files, the same where the batches draw each pair once: a file in
    TRL's convention is converted only where drawn)."""
    und_norm, gen_norm = np.sqrt(triples[:, 0]), np.sqrt(triples[:, 1])
    total = und_norm + gen_norm
    w = gen_norm[total > 0] / total[total > 0]
    t_mean, n_mean = float(np.mean(und_tokens)), float(np.mean(gen_tokens))
    return {
        **summary(w, "grad_weighted_w_und", SHARE),
        "und_tokens_mean": t_mean,
        "gen_tokens_mean": n_mean,
        "length_normalised_w_und": n_mean / (n_mean + t_mean),
    }


def analyse(log: GradientLog, und_tokens: Sequence[float], gen_tokens: Sequence[float]) -> dict[str, Any]:
    """All statistics of one run (the body of diagnostics.json, without run metadata or the sweep)."""
    if len(log) == 0:
        raise ValueError("the gradient log is empty")
    everything = np.ones(len(log.params.names), dtype=bool)
    inter = _masked(log.array("inter"), everything)
    inter_cos, _ = cosines(inter)
    intra: dict[str, Any] = {}
    samples: dict[str, Any] = {"inter_cos": inter_cos.tolist(), "ratio": ratios(inter).tolist()}
    for task in ("und", "gen"):
        cos, undefined = cosines(_masked(log.array(f"intra_{task}"), everything))
        intra |= summary(cos, f"{task}_cos", COSINE) | {f"{task}_cos_undefined": undefined}
        intra[f"welch_{task}_vs_inter"] = welch(cos, inter_cos)
        samples[f"intra_{task}_cos"] = cos.tolist()
    per_layer, per_module = per_group(log)
    return {
        "n": len(log),
        "inter": group_summary(inter),
        "intra": intra,
        "per_layer": per_layer,
        "depth_trend": depth_trend(per_layer),
        "per_module": per_module,
        "norm_change": norm_change(inter),
        "weighting": weighting(inter, und_tokens, gen_tokens),
        "losses": {**summary(log.und_loss, "und"), **summary(log.gen_loss, "gen")},
        "samples": samples
        | {
            "und_norm": [finite(v) for v in np.sqrt(inter[:, 0]).tolist()],  # (null where a batch overflowed)
            "gen_norm": [finite(v) for v in np.sqrt(inter[:, 1]).tolist()],
            "und_index": list(log.und_index),
            "gen_index": list(log.gen_index),
        },
    }
