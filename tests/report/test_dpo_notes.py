"""The report's plain-words notes on generation DPO: fitted pairs that did not raise generation, or a loss stuck at
ln 2, and silence when an arm did raise it."""

from __future__ import annotations

from typing import Any

from unigap.report.findings import dpo_notes
from unigap.train.defaults import LN2


def _results(delta: float, significant: bool, loss: float, no_signal: bool, overoptimised: bool = False) -> dict[str, Any]:
    training = {"und-only": {"trained": ["und"], "gen_overoptimised": None},
                "gen-only": {"trained": ["gen"], "gen_loss": loss, "gen_no_signal": no_signal, "gen_ln2_gap": loss - LN2,
                             "gen_chosen_shift": 1.0,
                             "gen_overoptimised": overoptimised}}
    gen = {"delta": delta, "significant": significant, "test": "paired", "p": 0.4}
    return {"training": training, "results": {m: {"generation.accuracy": gen} for m in training}}


def test_fitted_pairs_without_a_gain_are_explained() -> None:
    [note] = dpo_notes(_results(0.003, False, 0.55, False))
    assert "No arm's generation DPO raised generation accuracy significantly" in note
    assert "gen-only: +0.003 (paired t-test p 0.400)" in note and "fitted its training pairs" in note and "0.550" in note


def test_a_loss_stuck_at_ln2_is_named_as_the_reason() -> None:
    [note] = dpo_notes(_results(-0.01, False, 0.692, True))
    assert "stayed at ln 2 (0.692)" in note


def test_a_loss_above_ln2_is_not_called_fitted() -> None:
    [note] = dpo_notes(_results(-0.01, False, 0.725, False))
    assert "ended above ln 2 (0.725)" in note and "fitted" not in note


def test_without_a_paired_test_the_welch_p_is_quoted() -> None:
    results = _results(0.003, False, 0.55, False)
    results["results"]["gen-only"]["generation.accuracy"] |= {"test": "welch", "p": 0.5}
    assert "gen-only: +0.003 (Welch's t-test p 0.500)" in dpo_notes(results)[0]


def test_a_significant_gain_needs_no_note() -> None:
    assert dpo_notes(_results(0.08, True, 0.55, False)) == []


def test_an_over_optimised_arm_gets_its_own_banner_only() -> None:
    notes = dpo_notes(_results(-0.2, True, 0.01, False, overoptimised=True))
    assert len(notes) == 1 and "over-optimised in gen-only" in notes[0]


def test_the_best_is_named_among_the_arms_that_did_not_over_optimise() -> None:
    results = _results(0.003, False, 0.55, False)
    results["training"]["joint"] = {**results["training"]["gen-only"], "trained": ["und", "gen"], "gen_loss": 0.01,
                                    "gen_chosen_shift": -9.0, "gen_overoptimised": True}
    results["results"]["joint"] = {"generation.accuracy": {"delta": -0.2, "significant": True, "test": "paired",
                                                           "p": 1e-6}}
    over, no_gain = dpo_notes(results)
    assert "over-optimised in joint" in over
    assert "The best of the arms that did not over-optimise, gen-only: +0.003" in no_gain


def test_an_arm_without_a_generation_delta_is_passed_over() -> None:
    """Every verdict undecided leaves Δ null: the best is chosen among the arms that have one."""
    results = _results(0.003, False, 0.55, False)
    results["training"]["joint"] = {**results["training"]["gen-only"], "trained": ["und", "gen"]}
    results["results"]["joint"] = {"generation.accuracy": {"delta": None, "significant": False, "test": None,
                                                           "p": None}}
    [note] = dpo_notes(results)
    assert "gen-only: +0.003" in note


def test_the_notes_never_contradict_a_measured_gain_of_an_over_optimised_arm() -> None:
    """An over-optimised arm that nonetheless raised generation significantly: the banner quotes the measured change
    instead of promising a fall, and the no-gain note speaks only of the arms that did not over-optimise."""
    results = _results(0.01, False, 0.55, False)
    results["training"]["joint"] = {**results["training"]["gen-only"], "trained": ["und", "gen"], "gen_loss": 0.01,
                                    "gen_chosen_shift": -9.0, "gen_overoptimised": True}
    results["results"]["joint"] = {"generation.accuracy": {"delta": 0.12, "significant": True, "test": "paired",
                                                           "p": 1e-6}}
    over, no_gain = dpo_notes(results)
    assert "generation accuracy here: joint +0.120" in over and "expect generation to get worse" not in over
    assert no_gain.startswith('<p class="banner">No arm that did not over-optimise raised generation accuracy')
    assert "No arm's generation DPO" not in no_gain
