"""Metrics against stub models with known outputs: exact expected values, one generation pass, seeds."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from unigap.evaluate import (
    answer_items,
    batch_seed,
    evaluate,
    generate_and_judge,
    generation_metrics,
    held_out_pairs,
    understanding_items,
    understanding_metrics,
    vq_fidelity,
)
from unigap.evaluate.generation import stream_seed
from unigap.world import CATEGORIES, QUESTION_KINDS

N = 60


@pytest.fixture(scope="module")
def items():
    return understanding_items(N, seed=4)


@pytest.fixture(scope="module")
def specs():
    return [spec for spec, _ in held_out_pairs(N, seed=4)]


def test_a_perfect_answerer_scores_one(items, stub_factory):
    metrics = understanding_metrics(answer_items(stub_factory(items), items, batch_size=7, progress=False))
    assert metrics["accuracy"] == 1.0 and metrics["n"] == N and metrics["stderr"] == 0.0
    assert all(m["accuracy"] in (1.0, None) for m in metrics["by_kind"].values())
    assert sum(m["n"] for m in metrics["by_kind"].values()) == N


def test_wrong_kinds_score_zero_and_lower_the_total_by_their_share(items, stub_factory):
    wrong = ("color", "count")
    records = answer_items(stub_factory(items, wrong_kinds=wrong), items, batch_size=8, progress=False)
    metrics = understanding_metrics(records)
    n_wrong = sum(it.question.kind in wrong for it in items)
    assert 0 < n_wrong < N
    assert metrics["accuracy"] == pytest.approx(1 - n_wrong / N)
    for kind in QUESTION_KINDS:
        expected = 0.0 if kind in wrong else 1.0
        assert metrics["by_kind"][kind]["accuracy"] == expected, kind
    assert [r["index"] for r in records] == list(range(N))


def test_generation_side_metrics_have_their_exact_values(specs, stub_factory):
    blank, doubted = ("counting",), ("position",)
    stub = stub_factory(blank_categories=blank, doubted_categories=doubted)
    images, records = generate_and_judge(stub, specs, seed=9, batch_size=8, progress=False)
    metrics = generation_metrics(records)
    n_blank = sum(s.category in blank for s in specs)
    n_doubted = sum(s.category in doubted for s in specs)
    assert n_blank and n_doubted

    assert metrics["generation"]["accuracy"] == pytest.approx(1 - n_blank / N)
    assert metrics["generation"]["by_category"]["counting"]["accuracy"] == 0.0
    assert metrics["generation"]["by_category"]["colors"]["accuracy"] in (1.0, None)
    assert metrics["nonunification"]["score"] == pytest.approx((n_blank + n_doubted) / N)
    assert metrics["nonunification"]["mean_p_yes"]["mean"] == pytest.approx(
        (0.2 * (n_blank + n_doubted) + 0.9 * (N - n_blank - n_doubted)) / N
    )
    weak = metrics["weak_generation"]
    assert weak["n"] == n_blank + n_doubted
    assert weak["rate"] == pytest.approx(n_blank / (n_blank + n_doubted))
    assert weak["by_category"]["counting"]["rate"] == 1.0 and weak["by_category"]["position"]["rate"] == 0.0
    assert weak["by_category"]["colors"]["n"] == 0 and weak["by_category"]["colors"]["rate"] is None
    assert metrics["judge"]["accuracy"] == pytest.approx(1 - n_doubted / N)
    assert set(metrics["generation"]["by_category"]) == set(CATEGORIES)

    # one generation pass, judged on exactly the decoded images, seeded per batch
    assert [p for call in stub.generate_calls for p in call["prompts"]] == [s.text for s in specs]
    assert [call["seed"] for call in stub.generate_calls] == [batch_seed(9, b) for b in range(len(stub.generate_calls))]
    assert len(stub.judged) == len(images) == N and all(a is b for a, b in zip(stub.judged, images, strict=True))


def test_stream_seeds_keep_the_recorded_packing_and_never_repeat() -> None:
    """Round r's batch 100 used to get round r+1's batch 0 seed (stream·1000 + r·100 + batch); best-of-N's batch
    1000 the next stream's first. The packed keys are kept where they were injective, so recorded runs reproduce."""
    assert stream_seed(3, 9, 7, 2) == batch_seed(3, 9207) and stream_seed(3, 8, 999) == batch_seed(3, 8999)
    rounds = [stream_seed(3, 9, index, round_) for round_ in range(12) for index in range(150)]
    best_of_n = [stream_seed(3, 8, index) for index in range(1200)]
    pools = [stream_seed(3, 5, index, round_) for round_ in range(3) for index in range(300)]
    assert len(set(rounds + best_of_n + pools)) == len(rounds) + len(best_of_n) + len(pools)


def test_no_self_rejections_gives_a_null_weak_generation_rate(specs, stub_factory):
    _, records = generate_and_judge(stub_factory(), specs[:10], seed=0, batch_size=4, progress=False)
    metrics = generation_metrics(records)
    assert metrics["nonunification"]["score"] == 0.0
    weak = metrics["weak_generation"]
    assert (weak["rate"], weak["n"], weak["stderr"]) == (None, 0, None)


def test_evaluate_composes_both_sides(stub_factory):
    n, seed = 24, 2
    stub = stub_factory(understanding_items(n, seed), wrong_kinds=("describe",), blank_categories=("colors",))
    report = evaluate(stub, n, seed, batch_size=5, cfg_scale=3.0, progress=False)
    metrics = {"understanding", "generation", "nonunification", "weak_generation", "judge"}
    assert metrics | {"records", "config"} <= set(report)
    assert len(report["records"]["understanding"]) == len(report["records"]["generation"]) == n
    describe = report["understanding"]["by_kind"]["describe"]
    colors = report["generation"]["by_category"]["colors"]
    assert describe["n"] > 0 and describe["accuracy"] == 0.0
    assert colors["n"] > 0 and colors["accuracy"] == 0.0
    assert report["understanding"]["accuracy"] == pytest.approx(1 - describe["n"] / n)
    assert len(stub.generate_calls) == 5 and all(call["cfg_scale"] == 3.0 for call in stub.generate_calls)
    assert report["edit"] is None and "cannot edit" in report["edit_skipped"]
    assert len(report["records"]["reflection"]) == n
    assert report["reflect"]["stop_when_correct"]["rate"] == 1.0  # the stub reflects like an oracle
    assert report["reflect"]["valid_edit_rate"]["rate"] == 1.0
    failed = sum(r["verified"] is False for r in report["records"]["generation"])
    assert failed > 0 and report["reflect"]["stop_when_wrong"] == {**report["reflect"]["stop_when_wrong"], "rate": 0.0,
                                                                   "n": failed}
    assert report["self_judge"]["precision"]["n"] == sum(r["self_accepted"] for r in report["records"]["generation"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(stub, n, seed, batch_size=0, progress=False)


class _PerfectTokenizer:
    """Encodes an image as itself (kept aside) and decodes it back unchanged: a lossless VQ."""

    def __init__(self) -> None:
        self.kept: list = []

    def encode_images(self, images):
        self.kept = list(images)
        return torch.arange(len(images)).unsqueeze(-1)

    def decode_tokens(self, ids):
        return [Image.fromarray(self.kept[int(i)]) for i in ids[:, 0]]


class _BlankTokenizer(_PerfectTokenizer):
    def decode_tokens(self, ids):
        return [Image.new("RGB", (64, 64), (255, 255, 255)) for _ in ids]


def test_vq_fidelity_is_verifier_acceptance_of_reconstructions() -> None:
    perfect = vq_fidelity(_PerfectTokenizer(), n=40, seed=1, progress=False)
    assert perfect["n"] == 40 and perfect["accuracy"] >= 0.99
    blank = vq_fidelity(_BlankTokenizer(), n=40, seed=1, progress=False)
    assert blank == {"accuracy": 0.0, "n": 40, "stderr": 0.0, "ci95": [0.0, pytest.approx(0.0876, abs=1e-4)]}
