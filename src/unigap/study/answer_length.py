"""The mechanistic question multi-task DPO leaves open: does understanding DPO's trainability depend on answer length?

On Janus-Pro-7B understanding DPO moves understanding and generation DPO does not; on a small model the reverse can
hold. One candidate cause is answer length: a one-word answer gives DPO one token to move, an image gives it hundreds.
The job asks the same questions in both forms (`prefs build --answer-form word|sentence`: the same scenes and
questions, answered in one word or in a full sentence) and, for each form, measures the base model's gradient ratio
ρ = ‖g_U‖/‖g_G‖ against the study's generation pairs (`run_diagnostics`, the study's number of single-pair batches),
trains understanding-only DPO at the study's steps, rate and β (seed 0), and evaluates it on the base's seed-0 items.

Written to OUT/answer-length/answer_length.json (`ANSWER_LENGTH_FILE`; last: it marks the job done), with the pairs
and adapters beside it; the report shows it as a section of its own.
The verdict compares ρ between the forms (Welch on the per-batch ratios) and reports Δ understanding of each form
against the base, paired on the same items; it is stated whichever way it falls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unigap.atomic import write_text_atomically
from unigap.evaluate.stats import paired_difference
from unigap.report.runs import ANSWER_LENGTH_FILE
from unigap.report.stats import Sample, welch

FORMS = ("word", "sentence")
LOSS_TAIL = 50  # final DPO loss: mean over the last logged steps


def _sample(values: list[float]) -> Sample:
    items = np.asarray(values, dtype=float)
    return Sample(len(items), float(items.mean()), float(items.var()), items)


def _form(runner: Any, form: str, out: Path) -> dict[str, Any]:
    """One answer form: its pairs (built once), ρ on the base model, und-only DPO and its evaluation."""
    from unigap.diagnose import run_diagnostics, shared_parameters
    from unigap.evaluate import evaluate
    from unigap.prefs.build import BuildOptions, build_preferences
    from unigap.prefs.rows import load_pairs, write_rows
    from unigap.train.config import TrainConfig
    from unigap.train.dpo import DPOOptions
    from unigap.train.trainer import DPOTrainer

    c = runner.config
    pairs_file = out / f"und-{form}.jsonl"
    if not pairs_file.is_file():
        options = BuildOptions("und", c.und_pairs, c.data_seed, c.model, fallback_gt=True, answer_form=form)
        with runner.bar(f"answer length: {form} pairs", c.und_pairs) as update:
            write_rows(pairs_file, build_preferences(runner.model(), options, lambda kept, tried: update(kept)))
    und = load_pairs(pairs_file, "und")
    um = runner.model()
    with runner.bar(f"answer length: {form} gradients", c.diagnose_pairs) as update:
        report = run_diagnostics(um, shared_parameters(um, full_params=False, seed=0), und, runner.pairs("gen"),
                                 c.diagnose_pairs, 0, sweep_probes=0, options=DPOOptions(beta=c.beta),
                                 progress=update)
    um = runner.model()
    settings = TrainConfig(strategy="und-only", steps=c.steps, lr=c.lr, beta=c.beta, seed=0,
                           checkpoint_every=min(50, c.steps))
    trainer = DPOTrainer(um, settings, und, runner.pairs("gen"), out / form)
    with runner.bar(f"answer length: {form} DPO", c.steps) as update:
        result = trainer.train(trainer.has_checkpoint, lambda step, record: update(step))
    rows = [json.loads(line) for line in result.log_file.read_text().splitlines()]
    after = evaluate(um, c.n, 0, data_seed=c.data_seed, batch_size=c.batch_size, critique=False, progress=False)
    base = json.loads(runner.eval_file("base", 0).read_text())
    inter = report["inter"]
    return {
        "pairs": len(und),
        "answer_tokens": float(np.mean([(p.chosen_tokens + p.rejected_tokens) / 2 for p in und])),
        "ratio": inter["ratio_mean"], "ratio_ci95": inter["ratio_ci95"], "und_norm": inter["und_norm_mean"],
        "gen_norm": inter["gen_norm_mean"], "ratios": report["samples"]["ratio"],
        "und_dpo_loss": float(np.mean([r["und_dpo_loss"] for r in rows[-LOSS_TAIL:]])),
        "understanding": paired_difference([r["correct"] for r in base["records"]["understanding"]],
                                           [r["correct"] for r in after["records"]["understanding"]]),
        "generation": paired_difference([r["verified"] for r in base["records"]["generation"]],
                                        [r["verified"] for r in after["records"]["generation"]]),
    }


def answer_length(runner: Any) -> None:
    """The study job: both forms, then the comparison of ρ between them; OUT/answer-length/answer_length.json."""
    path = runner.out / ANSWER_LENGTH_FILE
    forms = {form: _form(runner, form, path.parent) for form in FORMS}
    word, sentence = (_sample(forms[f]["ratios"]) for f in FORMS)
    result = {"forms": forms, "ratio_sentence_minus_word": {"delta": sentence.mean - word.mean,
                                                            **welch(sentence, word)},
              "settings": {"steps": runner.config.steps, "lr": runner.config.lr, "beta": runner.config.beta,
                           "batches": runner.config.diagnose_pairs, "n": runner.config.n, "seed": 0}}
    result["finding"] = finding(result)
    write_text_atomically(path, json.dumps(result, indent=2, allow_nan=False) + "\n")


def finding(result: dict[str, Any]) -> str:
    """The result in one sentence, whichever way it falls."""
    word, sentence = (result["forms"][f] for f in FORMS)
    test = result["ratio_sentence_minus_word"]
    p = test["p"]
    longer = "does not change" if p is None or p >= 0.05 else ("raises" if test["delta"] > 0 else "lowers")
    moved = [f for f in FORMS if (result["forms"][f]["understanding"]["p"] or 1) < 0.05]
    return (f"Answering in a full sentence ({sentence['answer_tokens']:.1f} answer tokens against "
            f"{word['answer_tokens']:.1f}) {longer} ρ = ‖g_U‖/‖g_G‖ ({sentence['ratio']:.3f} vs {word['ratio']:.3f}, "
            f"Welch p {'n/a' if p is None else f'{p:.2g}'}); understanding DPO moved understanding significantly in "
            f"{' and '.join(moved) if moved else 'neither'} form.")
