"""Each paper's headline claim, its published numbers, and the test on the study that decides whether it reproduces.

Why a registry and not prose: the verdict sentence the report prints is computed from `results.json`, so it cannot
disagree with the numbers beside it. One claim per family; adding one is one entry in `CLAIMS`. A claim is decided by
one test: an arm against the base (the report's test, paired on the same items, Bonferroni within the arm's family as
the per-family tables; Welch's p, the papers' test, is quoted beside it) or against its baseline arm (the paired
comparison of `unigap.report.compare`). Reproduced = significant in the claimed direction; contradicted = significant
the other way; otherwise not reproduced. The sentence also gives each seed's Δ and the test over them (the item-level
test does not count the variation between training runs; `unigap.report.stats.seed_level`). (R3's claim is the loop
against one-shot generation, so `refine` is tested against the base; its comparison with best-of-N at the same sampling
budget is the report's own section.) The published numbers come from models and benchmarks we do not have
(Janus-Pro-7B, BAGEL-7B; VQA score, CLIPScore, T2I-CompBench++, GenEval++), so they are shown beside ours for
direction, never subtracted from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unigap.report.reference import PAPER_HEADLINE
from unigap.report.stats import TEST_LABELS
from unigap.study.results import BASE

_UND, _GW = PAPER_HEADLINE["und-only"], PAPER_HEADLINE["grad-weighted"]


@dataclass(frozen=True)
class Claim:
    family: str
    paper: str
    claim: str
    published: tuple[tuple[str, str], ...]  # (what the paper measured, its value) as published
    arm: str  # the arm whose test decides the claim
    metric: str  # a `results` metric (`unigap.study.results.METRICS`) or a comparison metric
    against: str = BASE  # the base, or the baseline arm the claim is about
    higher: bool = True  # the claimed direction


CLAIMS: dict[str, Claim] = {c.family: c for c in (
    Claim("p1", "arXiv 2603.17044", "understanding-only DPO raises understanding",
          (("Janus-Pro-7B, und-only: Δ VQA score", f"{_UND['vqa']:+.2f} (p {_UND['vqa_p']})"),
           ("best Δ CLIPScore of the seven strategies (grad-weighted)", f"{_GW['clip']:+.2f} (p {_GW['clip_p']})")),
          "und-only", "understanding.accuracy"),
    Claim("p2", "arXiv 2507.16663", "SFT on the model's self-accepted images raises generation",
          (("Janus-Pro-7B, T2I-CompBench++ overall: base → self-SFT → curriculum", "35.21 → 43.29 → 44.18"),
           ("non-unification: base → self-SFT", "26.22 → 16.98")),
          "self-sft", "generation.accuracy"),
    Claim("p3", "arXiv 2602.15772", "the reflect → refine loop raises generation accuracy over one-shot generation",
          (("BAGEL-7B, GenEval++: one-shot → R3", "0.371 → 0.689"),
           ("image–text alignment", "60.6% → 73.4%")),
          "refine", "generation.accuracy"),
    Claim("p4", "arXiv 2601.21406", "generating the input's maps improves understanding beyond understanding SFT",
          (("headline numbers", "not available to us"),),
          "unimrg", "understanding.accuracy", against="und-sft"),
)}


def _test(results: dict[str, Any], claim: Claim) -> dict[str, Any] | None:
    """The deciding row (delta, ci, p, significance, test name), or None when the arms did not run."""
    if claim.against == BASE:
        row = results["results"].get(claim.arm, {}).get(claim.metric)
        if row is None or row.get("delta") is None:
            return None
        tests = results["bonferroni"]["families"][claim.family]["tests"]
        return {"delta": row["delta"], "ci95": row.get("delta_ci95"), "p": row["p"], "p_welch": row["welch"]["p"],
                "seed_level": row.get("seed_level"), "significant": row["significant_in_family"],
                "test": f"{TEST_LABELS[row['test']]} against the base, Bonferroni over the family's {tests} tests"}
    for comparison in results.get("comparisons", []):
        if comparison["arm"] == claim.arm and comparison["baseline"] == claim.against:
            row = comparison["metrics"].get(claim.metric)
            if row is None or row.get("delta") is None:
                return None
            return {"delta": row["delta"], "ci95": row.get("delta_ci95"), "p": row["p"], "significant": row["significant"],
                    "seed_level": row.get("seed_level"),
                    "test": f"{TEST_LABELS[row['test']]} against {claim.against}, Bonferroni over "
                            f"{comparison['tests']} tests"}
    return None


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per family that ran: the claim, the published numbers, the deciding test and the verdict."""
    ran = {arm["family"] for arm in results["arms"] if "family" in arm}
    out = []
    for family, claim in CLAIMS.items():
        if family not in ran:
            continue
        test = _test(results, claim)
        if test is None or test["p"] is None:  # (a Δ no test could weigh: n = 1 a side, or no variance)
            verdict = "not tested"
        elif not test["significant"]:
            verdict = "not reproduced"
        else:
            verdict = "reproduced" if (test["delta"] > 0) == claim.higher else "contradicted"
        out.append({"family": family, "paper": claim.paper, "claim": claim.claim,
                    "published": [list(row) for row in claim.published], "arm": claim.arm, "metric": claim.metric,
                    "against": claim.against, "verdict": verdict, **(test or {})})
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def sentence(entry: dict[str, Any]) -> str:
    """'The claim that …: reproduced / not reproduced here (arm Δ …, p …; the test).'"""
    head = f"{entry['paper']}'s claim that {entry['claim']}: {entry['verdict']} here"
    if entry["verdict"] == "not tested":
        return f"{head} (no test result for {entry['arm']} against {entry['against']})."
    ci = entry.get("ci95")
    interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
    p = _p(entry["p"])
    if entry.get("p_welch") is not None:
        p += f", Welch {entry['p_welch']:.2g}"
    seeds = entry.get("seed_level")
    if seeds and seeds["deltas"]:
        deltas = ", ".join(f"{d['delta']:+.3f}" for d in seeds["deltas"])
        p += f"; per seed {deltas}, over them p {_p(seeds['p'])}"
    return (f"{head} ({entry['arm']} − {entry['against']}, {entry['metric']}: {entry['delta']:+.3f}{interval}, "
            f"p {p}; {entry['test']}).")


POOR_ARM = "self-poor"  # self-improvement from deliberately poor labels, guard off (its arm in `unigap.arms`)
_CO_METRICS = ("nonunification.score", "generation.accuracy", "understanding.accuracy")  # the gap first


def co_degradation(results: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's co-degradation warning tested on `self-poor`: non-unification falls (the gap "closes") while
    generation or understanding accuracy falls too. It *appears* when the fall of non-unification and a fall of an
    accuracy are each significant (Bonferroni within the family); it is *suggested* when the point estimates fall that
    way without significance; otherwise it does not appear. None when the arm did not run."""
    rows = results["results"].get(POOR_ARM)
    if not rows or any(rows.get(m, {}).get("delta") is None for m in _CO_METRICS):
        return None
    falls = {m: rows[m]["delta"] < 0 for m in _CO_METRICS}
    significant = {m: falls[m] and rows[m]["significant_in_family"] for m in _CO_METRICS}
    accuracies = _CO_METRICS[1:]
    if significant[_CO_METRICS[0]] and any(significant[m] for m in accuracies):
        verdict = "appears"
    elif falls[_CO_METRICS[0]] and any(falls[m] for m in accuracies):
        verdict = "suggested, not significant"
    else:
        verdict = "does not appear"
    parts = ", ".join(f"{m.split('.')[0]} {rows[m]['delta']:+.3f} (p {_p(rows[m]['p'])})" for m in _CO_METRICS)
    family = results["bonferroni"]["families"]["p2"]  # (the p above uncorrected: the verdict's threshold beside them)
    return {"arm": POOR_ARM, "verdict": verdict, "deltas": {m: rows[m]["delta"] for m in _CO_METRICS},
            "p": {m: rows[m]["p"] for m in _CO_METRICS},
            "sentence": f"Co-degradation (non-unification falling while generation or understanding accuracy falls) "
                        f"{verdict} with poor self-labels and the guard off: {POOR_ARM} against the base, {parts}; "
                        f"significant when p < {family['alpha_corrected']:.2g}, Bonferroni over the family's "
                        f"{family['tests']} tests."}

