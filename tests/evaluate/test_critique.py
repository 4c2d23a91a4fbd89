"""Self-judge AUCs within categories, reflection against the verifier's parse, and edit accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from unigap.evaluate.critique import auc, self_judge_metrics, win_rate
from unigap.evaluate.editing import edit_accuracy, edit_items
from unigap.evaluate.run import evaluate
from unigap.evaluate.understanding import understanding_items
from unigap.model.editing import EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE
from unigap.world import parse_instruction, split_prompts, verify
from unigap.world.scene_edits import edit_picture


def test_auc_counts_ordered_pairs_with_ties_as_half() -> None:
    assert auc([0.9, 0.8], [0.1, 0.2])["auc"] == 1.0
    assert auc([0.1], [0.9])["auc"] == 0.0
    assert auc([0.5, 0.9], [0.5, 0.1])["auc"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    empty = auc([0.3], [])
    assert empty["auc"] is None and empty["n_wrong"] == 0


def record(category: str, p_yes: float, verified: bool) -> dict:
    return {"category": category, "p_yes": p_yes, "verified": verified, "self_accepted": p_yes >= 0.5}


def test_auc_within_ignores_how_categories_differ() -> None:
    """A judge that only knows easy categories from hard ones: pooled AUC high, within-category AUC 0.5."""
    rows = [record("single_object", 0.9, v) for v in (True, True, True, False)]
    rows += [record("position", 0.1, v) for v in (True, False, False, False)]
    metrics = self_judge_metrics(rows)
    assert metrics["auc_pooled"]["auc"] == pytest.approx(0.75)
    assert metrics["auc_within"]["auc"] == pytest.approx(0.5)
    assert metrics["auc_within"]["pairs"] == 3 * 1 + 1 * 3
    assert metrics["auc_by_category"]["counting"]["auc"] is None
    assert metrics["precision"]["precision"] == pytest.approx(3 / 4) and metrics["precision"]["n"] == 4


def test_auc_within_weights_categories_by_their_pairs() -> None:
    rows = [record("colors", p, v) for p, v in ((0.9, True), (0.1, False))]  # 1 pair, AUC 1
    rows += [record("position", p, v) for p, v in ((0.1, True), (0.2, True), (0.9, False))]  # 2 pairs, AUC 0
    assert self_judge_metrics(rows)["auc_within"]["auc"] == pytest.approx(1 / 3)


def test_the_aucs_carry_n_and_a_95_interval_from_their_standard_errors() -> None:
    """Every metric of a report has its interval: the AUCs had none (and the within-category one no n or stderr),
    so a reading 0.001 under a target could not be told from noise."""
    rng = np.random.default_rng(0)
    rows = [record(c, float(p), bool(v)) for c in ("colors", "position") for p, v in
            zip(rng.random(40), rng.random(40) < 0.5)]
    metrics = self_judge_metrics(rows)
    by = metrics["auc_by_category"]
    for m in by.values():
        if m["auc"] is not None:
            assert m["n"] == m["n_correct"] + m["n_wrong"]
            assert m["ci95"] == pytest.approx([m["auc"] - 1.959964 * m["stderr"], m["auc"] + 1.959964 * m["stderr"]])
    within = metrics["auc_within"]
    w = {c: by[c]["n_correct"] * by[c]["n_wrong"] for c in ("colors", "position")}
    stderr = np.sqrt(sum((w[c] * by[c]["stderr"]) ** 2 for c in w)) / sum(w.values())
    assert within["n"] == 80 and within["stderr"] == pytest.approx(stderr)
    assert within["ci95"] == pytest.approx([within["auc"] - 1.959964 * stderr, within["auc"] + 1.959964 * stderr])
    perfect = auc([0.9, 0.8], [0.1])
    assert perfect["ci95"][1] == 1.0 and perfect["ci95"][0] < 0.5  # within [0, 1], and not certainty from 3 images
    assert auc([0.1], [0.9])["stderr"] == pytest.approx(auc([0.9], [0.1])["stderr"])  # 0 and 1 alike
    assert auc([0.1], [0.9])["stderr"] > 0
    assert self_judge_metrics([record("colors", p, v) for p, v in ((0.9, True), (0.8, True), (0.2, False))]
                              )["auc_within"]["stderr"] > 0
    # Hanley and McNeil's standard error by hand: A = 5/6, Q1 = A/(2 − A) = 5/7, Q2 = 2A²/(1 + A) = 25/33, 3 correct
    # and 2 wrong: SE² = (A(1 − A) + 2(Q1 − A²) + 1(Q2 − A²)) / 6 (the checks above read the function's own output)
    a = 5 / 6
    se = np.sqrt((a * (1 - a) + 2 * (5 / 7 - a**2) + (25 / 33 - a**2)) / 6)
    hand = auc([0.9, 0.8, 0.3], [0.4, 0.1])
    assert hand["auc"] == pytest.approx(a) and hand["stderr"] == pytest.approx(se) == pytest.approx(0.2007082218)
    assert hand["ci95"] == pytest.approx([a - 1.959964 * se, 1.0])


def test_reflections_outside_the_grammar_are_format_failures(stub_factory) -> None:
    n, seed = 24, 3
    stub = stub_factory(understanding_items(n, seed), doubted_categories=("colors", "counting"))
    report = evaluate(stub, n, seed, batch_size=8, progress=False)
    failures = [r for r in report["records"]["reflection"] if r["format_failure"]]
    categories = {r["category"] for r in report["records"]["generation"]}
    assert failures and {r["category"] for r in failures} <= {"colors", "counting"} & categories
    assert report["reflect"]["format_failures"]["rate"] == pytest.approx(len(failures) / n)


def test_edit_items_are_broken_held_out_scenes_with_the_exact_fix() -> None:
    """Every item's instruction can be carried out on its canvas: the README's 500 items of seed 7 held a move of a
    large shape above one near the top edge, and an add no position allowed, which no editor could satisfy."""
    items = edit_items(500, seed=7)
    assert len(items) == 500
    test_prompts = {spec.text for spec in split_prompts("test", 0)}
    for item in items:
        parse_instruction(item["instruction"])  # in the grammar
        assert item["spec"].text in test_prompts
        assert not verify(item["image"], item["spec"]).satisfied  # broken
        assert any(verify(edit_picture(item["image"], item["instruction"], np.random.default_rng(s)),
                          item["spec"]).satisfied for s in range(3)), item["instruction"]  # and fixed by its fix
    again = edit_items(12, seed=7)
    assert [i["instruction"] for i in items[:12]] == [i["instruction"] for i in again]


def test_an_exact_editor_scores_near_one(editing_stub) -> None:
    result = edit_accuracy(editing_stub, 40, seed=5, batch_size=16, progress=False)
    assert result["n"] == 40 and result["accuracy"] >= 0.9  # an add may find no free position
    assert set(result["by_kind"]) == {"recolour", "add", "remove", "move"}
    assert all(r["kind"] == parse_instruction(r["instruction"]).kind for r in result["records"])


def test_edits_are_guided_by_the_edit_scales_and_the_report_says_which(editing_stub_factory, monkeypatch) -> None:
    editing_stub, scales = editing_stub_factory(understanding_items(8, 0)), set()
    edit = editing_stub.edit
    monkeypatch.setattr(editing_stub, "edit", lambda images, notes, cfg_scale, temperature, seed, image_cfg_scale:
                        scales.add((cfg_scale, image_cfg_scale)) or edit(images, notes))
    report = evaluate(editing_stub, 8, 0, batch_size=8, cfg_scale=4.0, progress=False, edit_cfg_scale=3.0,
                      edit_image_cfg_scale=1.25)
    assert scales == {(3.0, 1.25)} and report["edit"]["n"] == 8  # not generation's cfg_scale
    assert (report["config"]["edit_cfg_scale"], report["config"]["edit_image_cfg_scale"]) == (3.0, 1.25)
    scales.clear()
    report = evaluate(editing_stub, 8, 0, batch_size=8, progress=False)
    assert scales == {(EDIT_CFG_SCALE, EDIT_IMAGE_CFG_SCALE)} == {(report["config"]["edit_cfg_scale"],
                                                                    report["config"]["edit_image_cfg_scale"])}


def test_the_edit_guidance_flags_state_the_defaults_they_leave_in_place() -> None:
    from unigap.cli.common import EDIT_CFG_OPTION, EDIT_IMAGE_CFG_OPTION  # their help cannot import torch's constants

    assert f"default {EDIT_CFG_SCALE:g};" in EDIT_CFG_OPTION.help
    assert f"default {EDIT_IMAGE_CFG_SCALE:g};" in EDIT_IMAGE_CFG_OPTION.help


def test_the_win_rate_counts_only_the_verdicts_that_changed() -> None:
    """SPEC §2: among the base images whose verdict the trained judge changed, the share it now gets right."""

    class Judge:  # the trained model's P(yes), one per image
        def __init__(self, p_yes: list[float]) -> None:
            self.p_yes = p_yes

        def judge(self, images, prompts):
            return self.p_yes

    base = [  # (base judge accepted, verifier passed)
        (False, True),   # changed to accept, right: a win
        (False, False),  # changed to accept, wrong
        (True, False),   # changed to reject, right: a win
        (True, True),    # changed to reject, wrong
        (True, True),    # unchanged
        (False, None),   # changed, but the verifier could not read it: left out
    ]
    records = [{"prompt": "a red circle", "self_accepted": a, "verified": v} for a, v in base]
    metric = win_rate(Judge([0.9, 0.9, 0.1, 0.1, 0.9, 0.2]), [None] * len(records), records)
    assert metric["n"] == 4 and metric["wins"] == 2 and metric["value"] == 50.0
    assert metric["ci95"][0] < 50 < metric["ci95"][1] <= 100
    assert win_rate(Judge([0.9]), [None], records[4:5]) | {"stderr": None} == {
        "value": None, "n": 0, "stderr": None, "ci95": None, "wins": 0}
