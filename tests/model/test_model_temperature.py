"""Scoring at a sampling temperature: the log-probs of softmax(logits / T), the distribution `choose` draws from at
T, for every scorer a policy-gradient loss uses (images, answers, edits). GRPO's ratio needs them (TRL scores at the
sampling temperature); T = 1 is the default and changes nothing."""

from __future__ import annotations

import pytest
import torch

from unigap.model import UnifiedModel
from unigap.model.decoding import token_logprobs

QUESTIONS = ["What color is the circle?"]


def test_token_logprobs_are_the_tempered_softmaxs() -> None:
    logits, tokens = torch.randn(3, 5, 7), torch.randint(7, (3, 5))
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
        assert torch.allclose(token_logprobs(logits, tokens, temperature), expected, atol=1e-6)
    untempered = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.equal(token_logprobs(logits, tokens, 1.0), untempered)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits, tokens, 0.0)


def _scorer(editor: UnifiedModel, images, kind: str):
    """A scorer on greedy samples (at every step the most likely token), as a function of the temperature."""
    if kind == "image":
        prompts = ["a red circle", "two blue squares"]
        drawn = editor.generate_images(prompts, cfg_scale=3.0, temperature=0.0)
        return lambda **t: editor.image_token_logprobs(prompts, drawn, 3.0, **t)
    instructions = ["make the red circle blue", "add a square"]
    edits = editor.edit(images[:2], instructions, 2.0, temperature=0.0)
    return lambda **t: editor.edit_token_logprobs(images[:2], instructions, edits, 2.0, **t)


@pytest.mark.parametrize("kind", ["image", "edit"])
def test_a_colder_score_gives_the_greedy_choices_more_mass(editor: UnifiedModel, images, kind: str) -> None:
    """p_T(argmax) rises as T falls, at every step: greedy samples scored at T 0.5 are at least as likely as at T 1
    (to float rounding between the sampled and the teacher-forced logits), and more so somewhere; T 1 is the default
    bit for bit."""
    with torch.no_grad():
        score = _scorer(editor, images, kind)
        default, one, cold, hot = score(), score(temperature=1.0), score(temperature=0.5), score(temperature=2.0)
    assert torch.equal(default, one)
    assert bool((cold >= one - 1e-4).all()) and bool((cold > one + 1e-3).any())
    assert bool((hot <= one + 1e-4).all()) and bool((hot < one - 1e-3).any())


def test_answers_are_scored_at_the_temperature_given(editor: UnifiedModel, images) -> None:
    """Two one-word answers to the same question: at T their first tokens' log-probs differ by (l_a − l_b) / T, the
    logit gap over T, exactly what the tempered softmax gives (its normaliser is shared)."""
    images, questions, answers = [images[0]] * 2, [QUESTIONS[0]] * 2, ["red", "blue"]
    with torch.no_grad():
        gap = {}
        for temperature in (1.0, 0.5, 2.0):
            logprobs, mask = editor.answer_token_logprobs(images, questions, answers, temperature=temperature)
            assert mask.sum(dim=-1).tolist() == [2, 2]  # one word, then EOS
            gap[temperature] = float(logprobs[0, 0] - logprobs[1, 0])
    assert abs(gap[1.0]) > 1e-3
    assert gap[0.5] == pytest.approx(2 * gap[1.0], rel=1e-4) and gap[2.0] == pytest.approx(gap[1.0] / 2, rel=1e-4)
