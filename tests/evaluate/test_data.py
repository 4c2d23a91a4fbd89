"""Held-out data: test-split prompts and scenes of a fixed partition, whatever the sampling seed."""

from __future__ import annotations

import pytest

from unigap.errors import UserError
from unigap.evaluate import held_out_pairs, understanding_items
from unigap.world import QUESTION_KINDS, sample_records, scene_split, split_prompts


def test_same_seeds_reproduce_sample_records():
    assert held_out_pairs(20, seed=3, data_seed=3) == sample_records(20, 3, "test")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_pair_is_held_out_under_the_data_seed(seed):
    test_prompts = {spec.text for spec in split_prompts("test", 0)}
    pairs = held_out_pairs(30, seed=seed, data_seed=0)
    assert all(spec.text in test_prompts for spec, _ in pairs)
    assert all(scene_split(scene, 0) == "test" for _, scene in pairs)


def test_seed_changes_the_draw_not_the_partition():
    assert held_out_pairs(20, seed=1) != held_out_pairs(20, seed=2)
    assert held_out_pairs(20, seed=1) == held_out_pairs(20, seed=1)


def test_questions_are_seeded_and_cover_the_kinds():
    items = understanding_items(120, seed=5)
    assert [it.question for it in items] == [it.question for it in understanding_items(120, seed=5)]
    assert {it.question.kind for it in items} == set(QUESTION_KINDS)


def test_non_positive_n_is_a_user_error():
    with pytest.raises(UserError, match="n must be an integer >= 1, got 0"):
        held_out_pairs(0, seed=0)
