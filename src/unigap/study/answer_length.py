"""The mechanistic question multi-task DPO leaves open: does understanding DPO's trainability depend on answer length?

On Janus-Pro-7B understanding DPO moves understanding and generation DPO does not; on a small model the reverse can
hold. One candidate cause is answer length: a one-word answer gives DPO one token to move, an image gives it hundreds.
The job draws the same candidate questions in both forms (`prefs build --answer-form word|sentence --fallback-gt`:
the same scenes and questions, answered in one word or in a full sentence; the margin filter may keep different
subsets of them) and, for each form, measures the base model's gradient ratio ρ = ‖g_U‖/‖g_G‖ against the study's
generation pairs (`run_diagnostics`, the study's number of single-pair batches), trains understanding-only DPO at the
study's steps, rate and β (seed 0), and evaluates it as the study evaluates every arm, on the base's seed-0 items.

Both forms' batches draw the same generation pair (same seed and pair count), so ‖g_G‖ cancels in ρ_sentence/ρ_word
batch by batch: the forms are compared by a paired t-test on the per-batch log ratios (by Welch's where the margin
filter kept more pairs of one form: the generation draws then differ, `compare_forms`). Δ understanding and Δ
generation of each form are paired against the base on the same items (`unigap.study.results.paired`). Each form is
written to OUT/answer-length/<form>.json when done (a rerun skips it); OUT/answer-length/answer_length.json
(`ANSWER_LENGTH_FILE`) last, with the finding in one sentence, stated whichever way it falls.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from unigap.atomic import cached_json, read_json, write_json
from unigap.evaluate.stats import paired_difference, welch
from unigap.metrics_log import read_log
from unigap.study.results import ANSWER_LENGTH_FILE, METRICS, MethodRun, keyed, paired, sample

FORMS = ("word", "sentence")
LOSS_TAIL = 50  # final DPO loss: mean over the last logged steps
ALPHA = 0.05


def _against_base(base: dict[str, Any], after: dict[str, Any], name: str) -> dict[str, Any]:
    """Δ of one headline metric against the base, paired on the same items (`delta`, `delta_ci95`, `p`)."""
    [metric] = [m for m in METRICS if m.name == name]
    before, trained = MethodRun("base", 0, base), MethodRun("trained", 0, after)
    test = paired(keyed([trained], metric), keyed([before], metric))
    if test is None:
        raise RuntimeError(f"the answer-length evaluation does not hold the base's {name} items")
    return {"delta": sample(trained, metric).mean - sample(before, metric).mean, "delta_ci95": test["delta_ci95"],
            "p": test["p"]}


def _form(runner: Any, form: str, out: Path) -> dict[str, Any]:
    """One answer form: its pairs, ρ on the base model, und-only DPO and its evaluation."""
    from unigap.diagnose import run_diagnostics, shared_parameters
    from unigap.prefs.build import BuildOptions, build_preferences
    from unigap.prefs.rows import load_pairs, write_rows
    from unigap.train.config import TrainConfig
    from unigap.train.dpo import DPOOptions
    from unigap.train.trainer import DPOTrainer

    c = runner.config
    pairs_file = out / f"und-{form}.jsonl"
    if not pairs_file.is_file():
        options = BuildOptions("und", c.und_pairs, c.data_seed, c.model, fallback_gt=True, answer_form=form,
                               data_seed=c.data_seed)
        with runner.bar(f"answer length: {form} pairs", c.und_pairs) as update:
            write_rows(pairs_file, build_preferences(runner.model(), options, lambda kept, tried: update(kept)))
    und = load_pairs(pairs_file, "und")
    um = runner.model()
    with runner.bar(f"answer length: {form} gradients", c.diagnose_pairs) as update:
        report = run_diagnostics(um, shared_parameters(um, full_params=False, seed=0), und, runner.pairs("gen"),
                                 c.diagnose_pairs, 0, sweep_probes=0, options=DPOOptions(beta=c.beta),
                                 progress=update)
    um = runner.model()
    settings = TrainConfig(strategy="und-only", steps=c.steps, lr=c.lr, beta=c.beta, nll_weight=c.nll_weight, seed=0,
                           checkpoint_every=min(50, c.steps))  # the study's und-only arm, on the other answer form
    trainer = DPOTrainer(um, settings, und, runner.pairs("gen"), out / form)
    with runner.bar(f"answer length: {form} DPO", c.steps) as update:
        result = trainer.train(trainer.has_checkpoint, lambda step, record: update(step))
    rows = read_log(result.log_file)
    after = runner.evaluation(um, 0)
    base = read_json(runner.eval_file("base", 0))
    inter = report["inter"]
    return {
        "pairs": len(und),
        "answer_tokens": float(np.mean([(p.chosen_tokens + p.rejected_tokens) / 2 for p in und])),
        "ratio": inter["ratio_mean"], "ratio_ci95": inter["ratio_ci95"], "und_norm": inter["und_norm_mean"],
        "gen_norm": inter["gen_norm_mean"], "ratios": report["samples"]["ratio"],
        "und_dpo_loss": float(np.mean([r["und_dpo_loss"] for r in rows[-LOSS_TAIL:]])),
        "understanding": _against_base(base, after, "understanding.accuracy"),
        "generation": _against_base(base, after, "generation.accuracy"),
    }


def answer_length(runner: Any) -> None:
    """The study job: both forms (each resumable), then the comparison of ρ between them."""
    from unigap.train.loop import CHECKPOINT_DIR

    path = runner.out / ANSWER_LENGTH_FILE
    forms = {}
    for form in FORMS:
        forms[form] = cached_json(path.parent / f"{form}.json", lambda form=form: _form(runner, form, path.parent))
        # (once its result is saved: a run killed before that resumes from it, not from step 0)
        shutil.rmtree(path.parent / form / CHECKPOINT_DIR, ignore_errors=True)  # the adapter and log stay
    c = runner.config
    result = {"forms": forms, "ratio_sentence_over_word": compare_forms(*(forms[f] for f in FORMS), c.diagnose_pairs),
              "settings": {"steps": c.steps, "lr": c.lr, "beta": c.beta, "nll_weight": c.nll_weight,
                           "batches": c.diagnose_pairs, "n": c.n, "seed": 0}}
    result["finding"] = finding(result)
    write_json(path, result)


def compare_forms(word: dict[str, Any], sentence: dict[str, Any], batches: int) -> dict[str, Any]:
    """ρ_sentence / ρ_word as the geometric mean of the batches' ratios, with its interval and p: paired batch by
    batch where both forms drew the same generation pairs, which needs und files of one length (the diagnosis draws
    the generation order after the und order, from one generator), and each kept all its `batches` (a batch whose ρ
    is not finite is dropped, at its own place in each form), else by Welch's test on the log ratios."""
    logs = [np.log(form["ratios"]) for form in (word, sentence)]
    if word["pairs"] == sentence["pairs"] and len(logs[0]) == len(logs[1]) == batches:
        change = paired_difference(*logs)  # log ρ_sentence − log ρ_word, batch by batch
        test, delta, ci95, batches = "paired", change["delta"], change["ci95"], change["n"]
    else:
        change, delta = welch(logs[1], logs[0]), float(logs[1].mean() - logs[0].mean())
        test, ci95, batches = "welch", change["delta_ci95"], min(map(len, logs))
    return {"geometric_mean": math.exp(delta), "batches": batches, "test": test, "p": change["p"],
            "ci95": None if ci95 is None else [math.exp(v) for v in ci95]}


def finding(result: dict[str, Any]) -> str:
    """The result in one sentence, whichever way it falls."""
    word, sentence = (result["forms"][f] for f in FORMS)
    ratio = result["ratio_sentence_over_word"]
    p = ratio["p"]
    effect = ("does not change" if p is None or p >= ALPHA else
              "raises" if ratio["geometric_mean"] > 1 else "lowers")
    moved = [f"{f} ({result['forms'][f]['understanding']['delta']:+.3f})" for f in FORMS
             if result["forms"][f]["understanding"]["p"] is not None and result["forms"][f]["understanding"]["p"] < ALPHA]
    test, shown = ratio.get("test", "paired"), "n/a" if p is None else f"{p:.2g}"
    return (f"Answering in a full sentence ({sentence['answer_tokens']:.1f} answer tokens against "
            f"{word['answer_tokens']:.1f}) {effect} ρ = ‖g_U‖/‖g_G‖ ({sentence['ratio']:.3f} vs {word['ratio']:.3f}; "
            f"ratio {ratio['geometric_mean']:.2f}, {test} p {shown}); understanding DPO moved understanding "
            f"significantly in {' and '.join(moved) if moved else 'neither'} form.")
