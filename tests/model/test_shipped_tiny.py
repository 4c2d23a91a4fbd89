"""The shipped embedded model: present, small, loadable offline, and trained (not a random initialisation)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from unigap.evaluate import answer_items, held_out_pairs, understanding_items
from unigap.evaluate.editing import edit_accuracy
from unigap.evaluate.generation import generate_and_judge
from unigap.model import load_model, loading
from unigap.pretrain import FULL, PretrainConfig
from unigap.evaluate.understanding import normalize_answer
from unigap.world import break_scene, is_valid_fix, parse_reflection, render, verify

SIZE_LIMIT = 25 * 2**20  # the shipped weights stay <= 25 MB
# measured on the shipped model (v7) with these exact calls: edit 0.28, stop 0.53, valid 0.75 (n = 32 each);
# a random model scores ~0 on all three
EDIT_FLOOR, STOP_FLOOR, VALID_FLOOR = 0.15, 0.35, 0.5


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_the_shipped_model_is_small_and_self_contained() -> None:
    directory = loading.EMBEDDED["tiny"]
    weights = directory / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= SIZE_LIMIT
    assert (directory / "tokenizer.json").is_file() and (directory / "pretrain.json").is_file()


def test_the_shipped_model_is_what_the_full_preset_trains() -> None:
    """The full preset is the shipped weights' recipe (their corpus rules since changed: docs/experiments.md). A
    setting added to the recipe since is compared at its default, which is what the shipped run trained with."""
    recorded = json.loads((loading.EMBEDDED["tiny"] / "pretrain.json").read_text())["config"]
    assert asdict(PretrainConfig(**recorded)) == asdict(FULL)
    # what the shipped run did not record must be off in the preset, not merely equal to it
    assert recorded.get("polish_steps", 0) == 0 and FULL.polish_steps == 0
    assert recorded.get("critique_intact") is None and FULL.critique_intact is None


def test_the_shipped_model_understands_held_out_scenes(tiny) -> None:
    """A random model answers ~0 of these exactly; the shipped one 0.704 at n = 500 (README)."""
    records = answer_items(tiny, understanding_items(40, seed=7), progress=False)
    assert sum(r["correct"] for r in records) / len(records) >= 0.45


def test_the_shipped_model_generates_what_the_verifier_accepts(tiny) -> None:
    """Some held-out prompts yield verified images (a random model's images are noise: ~0; the shipped one
    0.44 at n = 500, README)."""
    specs = [spec for spec, _ in held_out_pairs(32, seed=7)]
    _, records = generate_and_judge(tiny, specs, 7, 32, 5.0, 1.0, False)
    assert sum(r["verified"] for r in records) >= 2


def test_random_image_tokens_are_clutter_the_verifier_rejects(tiny) -> None:
    """A model that learned nothing must score ~0: random tokens decode to ~11 colour blobs, which met
    existence prompts ("a circle") as often as the trained model's images before the world's object limit."""
    specs = [spec for spec, _ in held_out_pairs(64, seed=3)]
    codebook = tiny.model.config.vq_config.num_embeddings
    ids = torch.randint(codebook, (len(specs), 64), generator=torch.Generator().manual_seed(0))
    accepted = [verify(image, spec).satisfied for image, spec in zip(tiny.decode_tokens(ids), specs, strict=True)]
    assert sum(accepted) <= 1


def test_the_shipped_model_edits_broken_scenes_into_ones_that_satisfy_the_prompt(tiny) -> None:
    """It can edit (the sidecar says so) and an exact instruction repairs some broken held-out scenes
    (a random model's edit is noise, ~0)."""
    assert tiny.supports_editing
    result = edit_accuracy(tiny, 32, seed=7, progress=False)
    assert result["n"] == 32 and result["accuracy"] >= EDIT_FLOOR


def test_the_decoder_says_which_reflections_it_cut_off(tiny) -> None:
    """`return_finished`: whether each answer ended in the model's own EOS. The shipped model's reflections (three
    or more words) all end within 24 tokens and none within 2; the texts are those of the plain call."""
    pairs = held_out_pairs(8, seed=3)
    images, prompts = [render(scene) for _, scene in pairs], [spec.text for spec, _ in pairs]
    texts, finished = tiny.reflect(images, prompts, return_finished=True)
    assert texts == tiny.reflect(images, prompts) and finished == [True] * 8
    cut, finished = tiny.reflect(images, prompts, max_new_tokens=2, return_finished=True)
    assert finished == [False] * 8 and all(len(text.split()) == 2 for text in cut)
    assert tiny.answer([], [], return_finished=True) == ([], [])


def test_sampled_answers_carry_their_ids_and_are_scored_as_sampled(tiny) -> None:
    """`sample_answers`: the texts `answer` gives, the ids sampled (EOS last only where one was sampled), and
    `answer_token_logprobs` scores those ids as they are: a finished answer as its text would be scored (the word
    tokenizer gives the ids back), a cut-off one without an EOS."""
    pairs = held_out_pairs(4, seed=3)
    images = [render(scene) for _, scene in pairs]
    questions = [tiny.prompts.reflect_question(spec.text) for spec, _ in pairs]
    done = tiny.sample_answers(images, questions, 24, 1.0, seed=5)
    assert done.texts == tiny.answer(images, questions, 24, 1.0, seed=5) and done.finished == [True] * 4
    assert all(ids[-1] == tiny.prompts.ids.eos and tiny.prompts.ids.eos not in ids[:-1] for ids in done.ids)
    by_ids, by_text = (tiny.answer_token_logprobs(images, questions, answers) for answers in (done.ids, done.texts))
    assert torch.equal(by_ids[1], by_text[1]) and torch.allclose(by_ids[0], by_text[0])
    cut = tiny.sample_answers(images, questions, 2, 1.0, seed=5)
    assert cut.finished == [False] * 4 and all(len(ids) == 2 and tiny.prompts.ids.eos not in ids for ids in cut.ids)
    assert tiny.answer_token_logprobs(images, questions, cut.ids)[1].sum(dim=-1).tolist() == [2] * 4
    with pytest.raises(ValueError, match=r"answers\[1\] must be a text or a non-empty list of token ids"):
        tiny.answer_token_logprobs(images[:2], questions[:2], [done.ids[0], [10**9]])
    for bad in (None, 5, ["red"], [7.9]):  # (a traceback from the list, or 7.9 scored as id 7)
        with pytest.raises(ValueError, match=r"answers\[0\] must be a text or a non-empty list of token ids"):
            tiny.answer_token_logprobs(images[:1], questions[:1], [bad])
    with pytest.raises(ValueError, match="each prompt must be a string, got None"):
        tiny.judge(images[:1], [None])
    placeholder = tiny.prompts.ids.image  # input only: a model that favours it (a random one may) never answers it
    with pytest.raises(ValueError, match="without the image placeholder"):
        tiny.answer_token_logprobs(images[:1], questions[:1], [[placeholder]])
    favoured = tiny.model.lm_head.register_forward_hook(lambda _, __, out: out.index_add(
        -1, torch.tensor([placeholder]), torch.full((*out.shape[:-1], 1), 100.0)))
    try:
        drawn = tiny.sample_answers(images, questions, 4, 1.0, seed=5)
        assert all(placeholder not in ids for ids in drawn.ids)
        assert tiny.answer_token_logprobs(images, questions, drawn.ids)[1].sum().item() > 0  # and they score
    finally:
        favoured.remove()


def test_the_shipped_model_reflects_in_the_grammar_and_stops_on_intact_scenes(tiny) -> None:
    """On renders of held-out prompts it answers "no further edit needed"; on scenes broken by one edit it
    names some valid fixes; every answer is in the grammar."""
    pairs = held_out_pairs(32, seed=7)
    rng = np.random.default_rng(0)
    broken = [break_scene(scene, spec, rng)[0] for spec, scene in pairs]
    prompts = [spec.text for spec, _ in pairs]
    intact = [parse_reflection(a) for a in tiny.reflect([render(scene) for _, scene in pairs], prompts)]
    fixes = [parse_reflection(a) for a in tiny.reflect([render(scene) for scene in broken], prompts)]
    assert all(r.format_ok for r in intact + fixes)
    assert sum(r.stop for r in intact) >= STOP_FLOOR * len(intact)
    valid = sum(r.edit is not None and is_valid_fix(scene.objects, spec, r.edit, 6) for r, scene, (spec, _)
                in zip(fixes, broken, pairs, strict=True))
    assert valid >= VALID_FLOOR * len(fixes)


def test_the_shipped_model_sees_the_shape_of_a_lone_object(tiny) -> None:
    """v4 named it 12% of the time, below a guess (it had learned colour → shape from prompted training scenes,
    and held-out scenes are where that is wrong); v5, with its pretrained frozen tower, 98%; v6 100% (n = 49, README)."""
    scenes = [scene for _, scene in held_out_pairs(600, seed=5) if len(scene.objects) == 1]
    questions = [f"What shape is the {scene.objects[0].color} object?" for scene in scenes]
    answers = tiny.answer([render(scene) for scene in scenes], questions, max_new_tokens=4, temperature=0.0)
    correct = [normalize_answer(a) == scene.objects[0].shape for a, scene in zip(answers, scenes, strict=True)]
    assert len(scenes) >= 30 and sum(correct) / len(scenes) >= 0.8
