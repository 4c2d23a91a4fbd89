"""A synthetic study (no model): evaluation records, training logs and diagnostics with known effects.

A uniquely named module (not conftest) so the tests can import it whatever other conftest.py pytest loaded."""

from __future__ import annotations

import math

import numpy as np

from unigap.report import MethodRun, Study

SEEDS = (0, 1, 2)
N = 200
# method -> (P(correct answer), P(verified image)) per item
RATES = {"base": (0.50, 0.40), "und-only": (0.75, 0.38), "gen-only": (0.50, 0.42), "joint": (0.52, 0.40)}
# method -> final (und, gen) DPO loss the log converges to
FINAL_LOSS = {"und-only": (0.22, 0.69), "gen-only": (0.69, math.log(2)), "joint": (0.40, 0.55)}
STEPS = 120


def eval_report(rng: np.random.Generator, p_und: float, p_gen: float, n: int = N) -> dict:
    """An evaluation report with per-item records (summaries left out: the report reads the records)."""
    und = [{"index": i, "kind": "color", "correct": bool(rng.random() < p_und)} for i in range(n)]
    gen = []
    for i in range(n):
        verified = bool(rng.random() < p_gen)
        rejected = bool(rng.random() < (0.2 if verified else 0.7))
        gen.append(
            {
                "index": i,
                "category": "colors",
                "verified": verified,
                "self_rejected": rejected,
                "weak_generation": (not verified) if rejected else None,
            }
        )
    return {"config": {"n": n}, "records": {"understanding": und, "generation": gen}}


def log_rows(rng: np.random.Generator, und_final: float, gen_final: float) -> list[dict]:
    rows = []
    for step in range(STEPS):
        frac = step / (STEPS - 1)
        w_und = 0.5 + 0.43 * min(1.0, frac * 4)
        rows.append(
            {
                "step": step,
                "und_dpo_loss": math.log(2) + (und_final - math.log(2)) * frac + rng.normal(0, 1e-3),
                "gen_dpo_loss": math.log(2) + (gen_final - math.log(2)) * frac + rng.normal(0, 1e-3),
                "und_kl": 3.0 * frac,
                "gen_kl": 0.04 * frac,
                "w_und": w_und,
                "w_gen": 1 - w_und,
                **{f"{task}/{kind}/{side}": -50.0 + sign * frac * (kind == "logps")  # chosen rise, rejected fall
                   for task in ("und", "gen") for side, sign in (("chosen", 1), ("rejected", -2))
                   for kind in ("logps", "ref_logps")},
            }
        )
    return rows


def diagnostics(rng: np.random.Generator) -> dict:
    inter = rng.normal(0.0, 0.02, 50)
    ratio = rng.lognormal(np.log(0.08), 0.5, 50)
    layers = [
        {"layer": layer, "cos_mean": float(c), "cos_ci95": [float(c) - 0.01, float(c) + 0.01], "ratio_mean": 0.08,
         "ratio_ci95": [0.07, 0.09]}
        for layer, c in enumerate(rng.normal(0, 0.005, 4))
    ] + [{"layer": 4, "zero_gradient": True}]  # fmt: skip
    return {
        "n": 50,
        "inter": {"cos_mean": float(inter.mean()), "ratio_mean": float(ratio.mean()), "ratio_cv": 0.5},
        "intra": {
            "und_cos_mean": 0.04,
            "gen_cos_mean": 0.006,
            "welch_und_vs_inter": {"p": 1e-6},
            "welch_gen_vs_inter": {"p": 0.01},
        },
        "per_layer": layers,
        "samples": {
            "inter_cos": inter.tolist(),
            "intra_und_cos": rng.normal(0.04, 0.02, 50).tolist(),
            "intra_gen_cos": rng.normal(0.006, 0.02, 50).tolist(),
            "ratio": ratio.tolist(),
        },
    }


def make_study() -> Study:
    runs = []
    for seed in SEEDS:
        for index, (method, (p_und, p_gen)) in enumerate(RATES.items()):
            rng = np.random.default_rng([seed, index])
            runs.append(
                MethodRun(
                    method=method,
                    seed=seed,
                    eval_report=eval_report(rng, p_und, p_gen),
                    log_rows=log_rows(rng, *FINAL_LOSS[method]) if method in FINAL_LOSS else [],
                    diagnostics=diagnostics(rng) if method == "base" else None,
                )
            )
    return Study(runs, {"model": "tiny", "n": N, "seeds": list(SEEDS)})
