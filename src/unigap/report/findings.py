"""The report's findings in plain words: whether each paper's claim holds here (`unigap.report.claims`), the
answer-length probe (`unigap.study.answer_length`), and what generation DPO did (over-optimised, or fitted its pairs
without raising generation)."""

from __future__ import annotations

from html import escape
from typing import Any

from unigap.report.cells import DASH, Safe, ci, fmt, fmt_p, table
from unigap.report.claims import sentence
from unigap.report.stats import TEST_LABELS
from unigap.train.defaults import LN2


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


def overoptimisation_note(results: dict[str, Any]) -> list[str]:
    """The over-optimised arms in plain words (empty when none is)."""
    flagged = {m: t for m, t in results["training"].items() if t.get("gen_overoptimised")}
    if not flagged:
        return []
    worst = min(flagged.values(), key=lambda t: t["gen_chosen_shift"])
    measured = [f"{arm} {fmt(r['delta'], signed=True)}" for arm in flagged
                if (r := results["results"].get(arm, {}).get("generation.accuracy")) and r["delta"] is not None]
    here = f" (generation accuracy here: {', '.join(measured)})" if measured else ""
    return [f'<p class="banner">Generation DPO over-optimised in {escape(", ".join(flagged))}: the loss fell far '
            f"below ln 2 (to {fmt(min(t['gen_loss'] for t in flagged.values()))} at the lowest) while the chosen images "
            f"became less likely than under the reference (by up to {fmt(-worst['gen_chosen_shift'], 1)} nats). DPO "
            "separated the pairs by pushing the model's own samples down, not by pulling the correct images up, "
            f"which tends to make generation worse, not better{escape(here)}. Lower the learning rate or steps, add "
            "the NLL term on the chosen, or use on-policy pairs: <code>unigap tune</code>.</p>"]


def no_gain_note(results: dict[str, Any]) -> list[str]:
    """When no arm's generation DPO that did not over-optimise (see above) raised generation accuracy significantly:
    the best of them, and what its loss says about why (pairs not separated, or separated without carrying over)."""
    gen_arms = [m for m, t in results["training"].items() if "gen" in t["trained"] and m in results["results"]]
    arms = [m for m in gen_arms if not results["training"][m].get("gen_overoptimised")]
    rows = {m: r for m in arms if (r := results["results"][m]["generation.accuracy"])["delta"] is not None}
    if not rows or any(r["significant"] and r["delta"] > 0 for r in rows.values()):
        return []
    over_gained = [m for m in gen_arms if m not in arms and (r := results["results"][m]["generation.accuracy"])
                   ["significant"] and r["delta"] is not None and r["delta"] > 0]  # (then "no arm" would be false)
    best = max(rows, key=lambda m: rows[m]["delta"])
    r, t = rows[best], results["training"][best]
    test = f"{TEST_LABELS[r['test']]} p {fmt_p(r['p'])}"
    loss = t.get("gen_loss")  # read with the training summary's own ln 2 verdicts (`gen_no_signal`, `gen_ln2_gap`)
    if loss is None:
        why = "its training log holds no generation DPO loss."
    elif t["gen_no_signal"]:
        why = (f"its generation DPO loss stayed at ln 2 ({fmt(loss)}): the pairs were not separated, so there was "
               "nothing to carry over (raise the learning rate or steps).")
    elif t["gen_ln2_gap"] > 0:
        why = (f"its generation DPO loss ended above ln 2 ({fmt(loss)}): training did not separate the pairs "
               "(lower the learning rate).")
    else:
        why = (f"it fitted its training pairs (generation DPO loss {fmt(loss)}, below ln 2 = {LN2:.3f}; chosen "
               f"{fmt(t.get('gen_chosen_shift'), 1, True)} nats against the reference), but held-out generation did "
               "not follow: what separates the pairs did not carry over to new prompts (compare settings on the "
               "validation split with <code>unigap tune</code>).")
    which = "of the arms that did not over-optimise" if len(arms) < len(gen_arms) else "of them"
    none = "No arm that did not over-optimise raised" if over_gained else "No arm's generation DPO raised"
    return [f'<p class="banner">{none} generation accuracy significantly. The best '
            f"{which}, {escape(best)}: {fmt(r['delta'], signed=True)} ({test}); {why}</p>"]


def dpo_notes(results: dict[str, Any]) -> list[str]:
    """The plain-words notes under the DPO losses table."""
    return overoptimisation_note(results) + no_gain_note(results)


def self_improvement_section(results: dict[str, Any]) -> list[Any]:
    """The understanding win rate of every trained arm (SPEC §2), the runs the audit guard stopped, and whether
    co-degradation appeared with poor self-labels (`unigap.report.claims.co_degradation`)."""
    wins, stops, co = results.get("win_rates") or {}, results.get("guard_stops") or {}, results.get("co_degradation")
    if not (wins or stops or co):
        return []
    out: list[Any] = ["<h2>Understanding win rate of the trained arms, the audit guard, co-degradation</h2>"]
    lacking = [arm["name"] for arm in results["arms"] if arm.get("kind") == "trained" and arm["name"] not in wins]
    if wins and lacking:
        out.append(f'<p class="note">No win rate for {escape(", ".join(lacking))}: their evaluations come from before '
                   "the study kept the base model's images (a study folder begun with an older unigap).</p>")
    if wins:
        rows = [[arm, fmt(w["value"], 1), DASH if not w["ci95"] else f"[{w['ci95'][0]:.1f}, {w['ci95'][1]:.1f}]",
                 str(w["n"]), ", ".join(f"{s['seed']}: {fmt(s['value'], 1)} (n {s['n']})" for s in w["per_seed"])]
                for arm, w in wins.items()]
        out += [table(["arm", "win rate", "95% CI", "n (verdicts changed)", "per seed"], rows),
                '<p class="note">Among the base model\'s held-out images whose self-judge verdict the trained model '
                "changed, the share where it now agrees with the verifier, × 100: 50 = no change in understanding. "
                "Pooled over seeds, Wilson interval.</p>"]
    for arm, seeds in stops.items():
        listed = "; ".join(f"seed {s['seed']}: precision {fmt(s['precision'])} (n {s['n']}) below "
                           f"{fmt(s['threshold'])} after epoch {s['epoch']}" for s in seeds)
        out.append(f'<p class="banner">The audit guard stopped {escape(arm)} ({escape(listed)}); those seeds were '
                   "evaluated at the last epoch it let through.</p>")
    if co is not None:
        out.append(f'<p class="note">{escape(co["sentence"])}</p>')
    return out
