"""The critique and editing corpora: train prompts only, exact answers, world-drawn pictures, never a generated image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from unigap.model import UnifiedModel, generation
from unigap.pretrain import QUICK, pretrain
from unigap.pretrain.corpus import critique_corpus, edit_corpus, understanding_corpus
from unigap.world import (
    DAMAGE_KINDS,
    NO_EDIT,
    REFLECT_QUESTION,
    detect,
    parse_instruction,
    parse_prompt,
    split_prompts,
)

TRAIN = {spec.text for spec in split_prompts("train", 0)}
REFLECT_PREFIX, REFLECT_SUFFIX = REFLECT_QUESTION.split("{prompt}")


@pytest.fixture(scope="module")
def critique():
    return critique_corpus(240, seed=0)


def _prompt_of(question) -> str:
    if question.kind == "judge":
        return question.text.removeprefix("Does this image show ").removesuffix("?")
    return question.text.removeprefix(REFLECT_PREFIX).removesuffix(REFLECT_SUFFIX)


def test_critique_questions_name_train_prompts_only_and_answer_in_the_grammar(critique) -> None:
    kinds = Counter()
    for questions in critique.questions:
        for question in questions:
            assert _prompt_of(question) in TRAIN  # held-out prompt texts never appear
            kinds[(question.kind, question.answer == NO_EDIT if question.kind == "reflect" else question.answer)] += 1
            if question.kind == "reflect" and question.answer != NO_EDIT:
                parse_instruction(question.answer)
    assert all(kinds[key] > 30 for key in [("judge", "yes"), ("judge", "no"), ("reflect", True), ("reflect", False)])


def test_critique_pictures_are_intact_broken_and_damaged(critique) -> None:
    shown = Counter(picture.split(":")[0] for picture in critique.pictures)
    assert set(shown) == {"intact", "broken", "damaged"} and min(shown.values()) > 40
    assert {p.split(":")[1] for p in critique.pictures if ":" in p} == set(DAMAGE_KINDS)


def test_judge_answers_agree_with_the_verifier_on_the_pictures(critique) -> None:
    """The answers come from the world's rule; the verifier reads the same pictures the same way."""
    agree = total = 0
    for image, questions in zip(critique.renders, critique.questions, strict=True):
        for question in questions:
            if question.kind == "judge":
                from unigap.world import verify

                agree += verify(image, parse_prompt(_prompt_of(question))).satisfied == (question.answer == "yes")
                total += 1
    assert agree / total >= 0.98


def test_edit_corpus_instructions_parse_and_change_the_picture() -> None:
    corpus = edit_corpus(60, seed=0)
    kinds = Counter(parse_instruction(text).kind for text in corpus.instructions)
    assert set(kinds) == {"recolour", "add", "remove", "move"}
    for source, text, result in zip(corpus.sources, corpus.instructions, corpus.results, strict=True):
        assert not np.array_equal(source, result)
        before, after = detect(source), detect(result)
        change = {"add": 1, "remove": -1}.get(parse_instruction(text).kind, 0)
        assert len(after) == len(before) + change
    again = edit_corpus(60, seed=0)
    assert again.instructions == corpus.instructions and np.array_equal(again.results, corpus.results)


def test_sentence_answers_are_a_share_of_understanding_questions() -> None:
    corpus = understanding_corpus(200, seed=0, questions_per_scene=4, sentence_fraction=0.25)
    forms = Counter(q.form for qs in corpus.questions for q in qs)
    assert 0.15 < forms["sentence"] / sum(forms.values()) < 0.35
    assert all(q.answer.endswith(".") for qs in corpus.questions for q in qs if q.form == "sentence")


def test_pretraining_never_generates_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge (and every other task) learns from world-drawn pictures and their VQ reconstructions only:
    a whole pretraining run with the image samplers disabled trains, saves, and can edit afterwards."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pretraining sampled an image")

    from unigap.model import editing

    monkeypatch.setattr(generation, "sample_from_prefix", forbidden)
    monkeypatch.setattr(editing, "sample_from_prefix", forbidden)
    monkeypatch.setattr(UnifiedModel, "generate_images", forbidden)
    monkeypatch.setattr(UnifiedModel, "edit", forbidden)
    config = QUICK.scaled(scenes=24, understanding_scenes=24, critique_scenes=24, edit_pairs=24, vq_steps=2, vq_batch=4,
                          vision_steps=2, steps=2, und_batch=2, gen_batch=2, critique_batch=2, edit_batch=2, warmup=1,
                          hidden_size=64, num_layers=2, num_heads=2, vision_hidden_size=32, vision_layers=1)
    out = pretrain(tmp_path / "model", config, show_progress=False)
    monkeypatch.undo()
    from unigap.model import load_model

    um = load_model(out)
    assert um.supports_editing
    assert um.edit([np.full((64, 64, 3), 255, np.uint8)], ["add a red circle"], seed=0).shape == (1, 64)
