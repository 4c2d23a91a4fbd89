"""The report's findings sections: whether each paper's claim holds here (`unigap.report.claims`), and the
answer-length probe (`unigap.study.answer_length`)."""

from __future__ import annotations

from html import escape
from typing import Any

from unigap.report.cells import DASH, Safe, ci, fmt, fmt_p, table
from unigap.report.claims import sentence
from unigap.report.reference import LN2


def claims_section(results: dict[str, Any]) -> list[Any]:
    """Each family's paper claim, its published numbers beside our deciding test, and the verdict
    (`unigap.report.claims`)."""
    entries = results.get("claims") or []
    if not entries:
        return []
    rows = []
    for e in entries:
        published = Safe("<br>".join(f"{escape(what)}: {escape(value)}" for what, value in e["published"]))
        ours = DASH if e.get("delta") is None else f"{e['arm']} − {e['against']}: {fmt(e['delta'], signed=True)} " \
                                                    f"(p {fmt_p(e['p'])})"
        rows.append([f"{e['family']} ({e['paper']})", e["claim"], published, ours, e["verdict"]])
    notes = "".join(f"<li>{escape(sentence(e))}</li>" for e in entries)
    return ["<h2>The papers' claims on this model</h2>",
            table(["family", "claim", "published (their model and benchmark)", "ours: Δ (p)", "verdict"], rows),
            f'<ul class="note">{notes}</ul>']


def answer_length_section(results: dict[str, Any]) -> list[Any]:
    """The answer-length probe: ρ and the effect of understanding DPO with one-word and full-sentence answers."""
    probe = results.get("answer_length")
    if probe is None:
        return []
    rows = []
    for form, r in probe["forms"].items():
        und, gen = r["understanding"], r["generation"]
        rows.append([form, fmt(r["answer_tokens"], 1), Safe(escape(fmt(r["ratio"])) + ci(r["ratio_ci95"])),
                     fmt(r["und_norm"]), fmt(r["und_dpo_loss"]), f"{fmt(und['delta'], signed=True)} (p {fmt_p(und['p'])})",
                     f"{fmt(gen['delta'], signed=True)} (p {fmt_p(gen['p'])})"])
    s = probe["settings"]
    return ["<h2>Why understanding DPO moves (or not): answer length</h2>",
            table(["answers", "answer tokens", "ρ = ‖g_U‖/‖g_G‖", "‖g_U‖", f"und DPO loss (last steps; ln 2 = {LN2:.3f})",
                    "Δ understanding (paired)", "Δ generation (paired)"], rows),
            f'<p class="note">{escape(probe["finding"])} The same candidate questions in both forms; ρ over '
            f"{s['batches']} single-pair batches of the base model; und-only DPO for {s['steps']} steps at lr {s['lr']:g}, β "
            f"{s['beta']:g}, seed {s['seed']}, evaluated on the base's {s['n']} seed-{s['seed']} items.</p>"]
