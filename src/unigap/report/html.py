"""`report.html`: the study as the paper shows it — headline table, diagnostics beside the published values,
figures, final losses against ln 2, methods — in one self-contained file.

Why self-contained: the report is copied off the machine that made it; figures are base64 PNG data URIs,
the CSS is inline, there is no script and no external URL. Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from unigap.arms import FAMILIES
from unigap.atomic import write_atomically
from unigap.report.cells import DASH, Safe, ci, fmt, fmt_p, significance_cell, significance_verdict, table
from unigap.report.figures import Plot
from unigap.report.findings import answer_length_section, claims_section, dpo_notes, self_improvement_section
from unigap.report.reference import PAPER_BASE, PAPER_BONFERRONI, PAPER_FINAL, PAPER_GRADIENTS, PAPER_HEADLINE
from unigap.train.defaults import LN2
from unigap.study.results import METRICS

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330;
       background: #fff; line-height: 1.45; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 8px; border-bottom: 2px solid #e3e6ec; padding-bottom: 4px; }
p.lead { color: #566074; margin: 0 0 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 6px; font-size: 0.9em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; white-space: normal; vertical-align: bottom; max-width: 9em; }
th:first-child, td:first-child { text-align: left; }
tr.base td { background: #fafbfc; font-style: italic; }
tr.paper td { color: #566074; background: #fbfaf4; }
td.sig { font-weight: 700; color: #0b6b2f; }
td.sig-worse { font-weight: 700; color: #9b1c1c; }
td { vertical-align: top; }
.ci { color: #7a8396; font-size: 0.85em; }
.flag { background: #fde8e8; color: #9b1c1c; border-radius: 3px; padding: 0 5px; font-weight: 600; }
.ok { color: #0b6b2f; }
p.note { font-size: 0.85em; color: #566074; margin: 2px 0 12px; }
p.banner { background: #fff4d6; border: 1px solid #e0b84a; border-radius: 4px; padding: 8px 12px; font-weight: 600; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ec; }
figcaption { font-size: 0.88em; color: #566074; margin-top: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.9em; }
dt { font-weight: 600; }
dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-word; }
"""
SMALL_RUN = 100  # items per seed below which the report says the run is too small for conclusions


def headline_table(results: dict[str, Any], methods: Sequence[str] | None = None,
                   significance: str = "significant") -> Safe:
    """Per method and metric: Δ vs base with its CI, and p (the paired test, or Welch's: `unigap.report.stats`)
    with the seed-level test's p under it; bold where `significance` says so (Bonferroni over every arm, or over the
    method's family with "significant_in_family"); all methods unless `methods`. Then the DPO arms' KL to the
    reference (und / gen, nats per sequence) and each arm's wall time over its seeds."""
    headers = ["method"]
    for metric in METRICS:
        headers += [f"Δ {metric.label}", "p"]
    headers += ["KL und / gen", "wall (min)"]
    base = results["results"][results["base"]]
    base_row: list[Any] = [f"{results['base']} (level)"]
    for metric in METRICS:
        m = base[metric.name]
        base_row += [Safe(escape(fmt(m["pooled"])) + ci(m["ci95_bootstrap"], below=True)), ""]
    rows, classes = [base_row + [DASH, _minutes(results, results["base"])]], ["base"]
    for method in results["methods"][1:] if methods is None else methods:
        row: list[Any] = [method]
        for metric in METRICS:
            m = results["results"][method][metric.name]
            significant = bool(m.get(significance))
            verdict = significance_verdict(significant, m["delta"], metric.higher_is_better)
            mark = "*" if significant else ""
            delta = escape(fmt(m["delta"], signed=True) + mark) + ci(m["delta_ci95"], signed=True, below=True)
            seeds = m["seed_level"]
            below = f'<br><span class="ci">seeds {escape(fmt_p(seeds["p"]))}</span>' if seeds["p"] is not None \
                else ""
            row += [significance_cell(delta, verdict), significance_cell(escape(fmt_p(m["p"])) + below, verdict)]
        training = results["training"].get(method)
        kl = f"{fmt(training['und_kl'], 2)} / {fmt(training['gen_kl'], 2)}" if training else DASH
        rows.append(row + [kl, _minutes(results, method)])
        classes.append("")
    return table(headers, rows, classes)


def _minutes(results: dict[str, Any], method: str) -> str:
    seconds = results.get("wall_seconds", {}).get(method)
    return DASH if seconds is None else f"{seconds / 60:.1f}"


def family_sections(results: dict[str, Any]) -> list[Any]:
    """One headline table per family of arms (when more than one family ran), corrected over its own arms."""
    families: dict[str, list[str]] = {}
    for arm in results["arms"]:
        families.setdefault(arm.get("family", "other"), []).append(arm["name"])
    tests = results["bonferroni"].get("families", {})
    if len(families) < 2 or not tests:
        return []
    out: list[Any] = ["<h2>Per family: Δ vs base, corrected within the family</h2>"]
    for family, arms in families.items():
        t = tests[family]
        out += [f"<h3>{escape(family)}: {escape(FAMILIES.get(family, 'arms outside the registry'))}</h3>",
                headline_table(results, arms, "significant_in_family"),
                f'<p class="note">bold* = significant after Bonferroni over this family\'s {t["tests"]} tests '
                f"(p < {t['alpha_corrected']:.2g}); green a gain, red a harm.</p>"]
    return out


def paper_headline_table() -> Safe:
    """The published Janus-Pro-7B headline (Δ VQA score, Δ CLIPScore) for direction and significance."""
    rows = [
        [method, fmt(v["vqa"], 2, True), fmt_p(v["vqa_p"]), fmt(v["clip"], 2, True), fmt_p(v["clip_p"])]
        for method, v in PAPER_HEADLINE.items()
    ]
    return table(["method (paper, Janus-Pro-7B)", "Δ VQA", "p", "Δ CLIPScore", "p"], rows, ["paper"] * len(rows))


def levels_table(results: dict[str, Any]) -> Safe:
    """Mean over seeds with its t-interval, and the per-seed values underneath."""
    rows, classes = [], []
    for method in results["methods"]:
        row: list[Any] = [method]
        for metric in METRICS:
            m = results["results"][method][metric.name]
            seeds = " · ".join(fmt(s["value"]) for s in m["per_seed"])
            row.append(
                Safe(
                    escape(fmt(m["mean_over_seeds"]))
                    + ci(m["ci95_seeds"])
                    + f'<br><span class="ci">{escape(seeds)}</span>'
                )
            )
        rows.append(row)
        classes.append("base" if method == results["base"] else "")
    return table(["method", *(m.label for m in METRICS)], rows, classes)


def comparison_section(c: dict[str, Any]) -> list[Any]:
    """One arm against its baseline arm: a verdict line, then per metric and question kind both levels, Δ [CI], p."""
    rows, better, worse = [], [], []
    for m in c["metrics"].values():
        verdict = significance_verdict(m["significant"], m["delta"], m["higher_is_better"])
        mark = "*" if m["significant"] else ""
        delta = escape(fmt(m["delta"], signed=True) + mark) + ci(m["delta_ci95"], signed=True, below=True)
        rows.append([m["label"], fmt(m["arm"]), fmt(m["baseline"]), significance_cell(delta, verdict),
                     significance_cell(escape(fmt_p(m["p"])), verdict),
                     m["test"] if m["p"] is not None else DASH, m["n"]])  # (no items: no test at all)
        if verdict:
            (better if verdict == "better" else worse).append(m["label"])
    found = (f"significantly better than {c['baseline']} on {', '.join(better)}" if better
             else f"not significantly better than {c['baseline']} on any metric")
    verdict = (f"{c['arm']} is {found}{'; worse on ' + ', '.join(worse) if worse else ''} (Bonferroni over its "
               f"{c['tests']} tests, p < {c['alpha_corrected']:.2g}).")
    headers = ["metric", c["arm"], c["baseline"], "Δ", "p", "test", "n"]
    return [f"<h2>{escape(c['arm'])} vs {escape(c['baseline'])}</h2>", f'<p class="lead">{escape(verdict)}</p>',
            table(headers, rows)]


def refine_table(results: dict[str, Any]) -> Safe:
    """Generation accuracy after each reflect/refine round per refine arm (pooled over seeds), improved / worse
    counts per round, and best-of-N at the same budget."""
    curves = results["refine_rounds"]
    rounds = max(len(curve) for curve in curves.values())
    rows = []
    for method, curve in curves.items():
        cells = [Safe(escape(fmt(e["accuracy"])) + (f'<br><span class="ci">+{e["improved"]} / −{e["worse"]}</span>'
                                                    if "improved" in e else "")) for e in curve]
        rows.append([method, *cells, *[DASH] * (rounds - len(curve))])
    if "best-of-n" in results["results"]:
        rows.append(["best-of-n (same budget)", *[DASH] * (rounds - 1),
                     fmt(results["results"]["best-of-n"]["generation.accuracy"]["pooled"])])
    return table(["arm", *(f"round {r}" for r in range(rounds))], rows)


def _signal(flag: bool | None) -> Safe:
    if flag is None:
        return Safe(DASH)
    return Safe('<span class="flag">no signal</span>' if flag else '<span class="ok">learning</span>')


def losses_table(results: dict[str, Any]) -> Safe:
    """Final (tail-mean) per-task DPO losses against ln 2, KL to the reference, final w_U."""
    rows = []
    for method, t in results["training"].items():
        paper = PAPER_FINAL.get(method, {})
        published = ", ".join(f"{k} {v}" for k, v in paper.items()) or DASH
        rows.append(
            [
                method, "+".join(t["trained"]), fmt(t["und_loss"]), _signal(t["und_no_signal"]), fmt(t["gen_loss"]),
                fmt(t["gen_ln2_gap"], 4, True), _signal(t["gen_no_signal"]), fmt(t["und_kl"]), fmt(t["gen_kl"]),
                fmt(t.get("gen_chosen_shift"), 2, True), _overoptimised(t.get("gen_overoptimised")), fmt(t["w_und"]),
                published,
            ]
        )  # fmt: skip
    headers = [
        "method", "trained", "und loss", "und signal", "gen loss", "gen − ln\u00a02", "gen signal", "KL und", "KL gen",
        "gen chosen log p − ref", "gen fit", "final w_U", "paper",
    ]  # fmt: skip
    return table(headers, rows)


def _overoptimised(flag: bool | None) -> Safe:
    if flag is None:
        return Safe(DASH)
    return Safe('<span class="flag">over-optimised</span>' if flag else '<span class="ok">ok</span>')


def gradients_table(results: dict[str, Any]) -> Safe:
    """Our diagnostics (mean over seeds) beside the published Janus-Pro values."""
    rows, classes = [], []

    def row(name: str, d: dict[str, Any], batches: str) -> list[Any]:
        ratio = d.get("ratio")
        return [
            name, batches, fmt(d.get("cos"), 4, True), fmt(ratio), fmt(1 / ratio if ratio else None, 1),
            fmt(d.get("ratio_cv"), 2), fmt(d.get("und_cos"), 4, True), fmt(d.get("gen_cos"), 4, True),
            fmt_p(d.get("und_vs_inter_p")), fmt_p(d.get("gen_vs_inter_p")),
        ]  # fmt: skip

    for method, d in results["diagnostics"].items():
        batches = " + ".join(str(s["batches"]) for s in d["per_seed"])
        count = len(d["per_seed"])
        rows.append(row(f"ours: {method} ({count} seed{'s' if count != 1 else ''})", d, batches))
        classes.append("")
    for model, d in PAPER_GRADIENTS.items():
        rows.append(row(f"paper: {model}", d, "200"))
        classes.append("paper")
    headers = [
        "source",
        "batches",
        "cos(g_U, g_G)",
        "ρ",
        "1/ρ",
        "CV(ρ)",
        "intra und cos",
        "intra gen cos",
        "p und",
        "p gen",
    ]
    return table(headers, rows, classes)


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>"
    )


def methods_section(results: dict[str, Any]) -> str:
    """How the numbers were computed, and the study configuration as given."""
    o, b, p1 = results["options"], results["bonferroni"], _ran_p1(results)
    notes = [
        f"Seeds: {', '.join(map(str, results['seeds']))}; every method and the base are evaluated per seed.",
        "Test: base and method are evaluated on the same items with the same sampling seeds, so each method is "
        "tested against the base by the two-sided paired t-test on the per-item differences pooled across seeds "
        "(Welch's t-test on the pooled outcomes where the items do not line up; results.json names the test of "
        "each row). Δ = pooled mean − base pooled mean; its CI is the test's interval. Welch's test on the pooled "
        "outcomes is in results.json and results.csv beside it (p_welch)"
        + (", the multi-task DPO paper's test (n = 200 per seed, 3 seeds)." if p1 else "."),
        f"Bonferroni over {b['tests']} tests (methods × metrics where the test is defined): α = {b['alpha']} → "
        f"significant when p < {b['alpha_corrected']:.2g}"
        + (f" (the multi-task DPO paper: {PAPER_BONFERRONI['methods']} × {PAPER_BONFERRONI['metrics']}, "
           f"p < {PAPER_BONFERRONI['alpha_corrected']})" if p1 else "") + f".{_family_note(b)}",
        "Levels: mean over seed means with a t-interval over seeds (k − 1 df); pooled per-item mean with a "
        f"percentile bootstrap ({o['bootstrap_resamples']} resamples, items resampled within each seed).",
        f"Final losses: mean of the last {o['loss_tail']} logged steps; a trained task ending within "
        f"{o['ln2_tolerance']} of ln 2 = {LN2:.4f} is flagged 'no signal'. KL: the trainer's per-sequence "
        "log-ratio to the reference, averaged the same way. 'Over-optimised': a trained generation loss below "
        "ln 2 / 4 while the chosen images' log-probability fell below the reference's (TRL's logps/chosen vs "
        "ref_logps/chosen): DPO separated the pair by pushing the rejected images down, not the chosen up.",
    ]
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    config = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(json.dumps(v, default=str))}</dd>" for k, v in results["config"].items()
    )
    return f"<ul>{items}</ul>" + (f"<h3>Study configuration</h3><dl>{config}</dl>" if config else "")


def _ran_p1(results: dict[str, Any]) -> bool:
    """Whether a multi-task DPO arm ran: that paper's published table and test belong in no other study's report."""
    return any(arm.get("family") == "p1" for arm in results["arms"])


def _paper_headline() -> list[Any]:
    return [paper_headline_table(),
            '<p class="note">Published Janus-Pro-7B deltas of the multi-task DPO paper vs base '
            f"VQA {PAPER_BASE['vqa']} / CLIPScore {PAPER_BASE['clip']} (our generation accuracy stands for its "
            "CLIPScore); different scales from ours — compare direction and significance only.</p>"]


def _family_note(bonferroni: dict[str, Any]) -> str:
    """Why the report states other test counts too: each family's table and claim correct within the family."""
    families = bonferroni.get("families") or {}
    if len(families) < 2:
        return ""
    counts = ", ".join(f"{name} {t['tests']}" for name, t in families.items())
    return (f" The headline corrects over every arm; each family's own table, and each claim, over that family's "
            f"arms × metrics ({counts} tests), as a reader of one paper's arms would.")


def render_html(results: dict[str, Any], plots: Sequence[Plot], title: str = "unigap study") -> str:
    """The whole report as one HTML string."""
    b = results["bonferroni"]
    per_seed = results["results"][results["base"]][METRICS[0].name]["per_seed"]
    lead = (
        f"{len(results['methods']) - 1} methods vs {results['base']}, seeds {results['seeds']}, "
        f"n = {'/'.join(sorted({str(s['n']) for s in per_seed}))} items per seed; "
        f"bold* = significant after Bonferroni (p < {b['alpha_corrected']:.2g}, {b['tests']} tests; green a gain, "
        "red a harm)."
    )
    smallest = min(s["n"] for s in per_seed)
    banner = (
        f'<p class="banner">Small run ({smallest} items per seed, {len(results["seeds"])} '
        f'seed{"s" if len(results["seeds"]) != 1 else ""}): it checks that the pipeline works and is too small '
        "for conclusions (a quick run). The full study uses 200 items per seed and 3 seeds.</p>"
        if smallest < SMALL_RUN else ""
    )
    sections = [
        f'<h1>{escape(title)}</h1>{banner}<p class="lead">{escape(lead)}</p>',
        "<h2>Headline: Δ vs base</h2>",
        headline_table(results),
        '<p class="note">Δ of pooled per-item means over all seeds, 95% CI of the paired test in brackets (Welch\'s '
        "where the items differ); base row: its level with a bootstrap CI. Under each p, the paired test over "
        "the seeds' Δ (k − 1 df): the tests above count each seed's items as items, so they cover item sampling "
        "only, this one the variation between training runs too. Understanding accuracy is our VQA-like "
        "score, generation accuracy the exact verifier's.</p>",
        *(_paper_headline() if _ran_p1(results) else []),
        *(_figure(p) for p in plots if p.path.name == "tradeoff.png"),
        *family_sections(results),
        *claims_section(results),
        *self_improvement_section(results),
        *answer_length_section(results),
        "<h2>Metric levels per method</h2>",
        levels_table(results),
        '<p class="note">Mean over seed means [t-interval over seeds]; per-seed values underneath.</p>',
    ]
    if results.get("refine_rounds"):
        sections += ["<h2>Reason → reflect → refine: accuracy per round</h2>", refine_table(results),
                     '<p class="note">Verifier accuracy over all prompts after each round (stopped prompts carry their '
                     "image forward), pooled over seeds; under it, prompts improved / made worse in that round.</p>"]
    for comparison in results.get("comparisons", []):
        sections += comparison_section(comparison)
    if results.get("comparisons"):
        sections.append('<p class="note">Arm against arm on the same items and sampling seeds: a paired t-test '
                        "on per-item differences pooled over seeds (Welch where the items do not line up).</p>")
    if results["training"]:
        sections += ["<h2>Final DPO losses vs ln 2</h2>", losses_table(results)]
        sections.append(
            '<p class="note">KL und / KL gen: the mean over a batch\'s chosen and rejected sequences of '
            "log π_θ − log π_ref, in nats per sequence — a plug-in estimate on the fixed preference pairs, not on "
            "fresh samples of the policy, so it is negative when training made those sequences less likely than "
            "the reference finds them (as DPO does to rejected ones).</p>"
        )
        sections += dpo_notes(results)
        sections += [_figure(p) for p in plots if p.path.name in ("losses.png", "logps.png", "weights.png")]
    if results["diagnostics"]:
        sections += ["<h2>Gradient diagnostics</h2>", gradients_table(results)]
        sections.append(
            '<p class="note">Mean over seeds of each run\'s mean per-batch cosine and ρ = ‖g_U‖/‖g_G‖ on the '
            "shared parameters; intra-task cosines are the calibration (two batches of one task); p: Welch "
            "intra vs inter. The paper quotes the intra-task values without a model size (shown on the 7B row).</p>"
        )
        sections += [_figure(p) for p in plots if p.path.name.startswith("gradients-")]
    sections += ["<h2>Methods</h2>", methods_section(results)]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><main>\n{body}\n</main></body></html>\n"
    )


def write_html(results: dict[str, Any], plots: Sequence[Plot], path: str | Path, title: str = "unigap study") -> Path:
    """`render_html` written atomically to `path`."""
    text = render_html(results, plots, title)
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
