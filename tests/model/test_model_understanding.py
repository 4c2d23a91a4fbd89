"""Answering, teacher-forced answer scoring, the yes/no judge, and input checking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unigap.errors import UserError
from unigap.model import UnifiedModel, load_model
from unigap.model.understanding import parse_verdict

QUESTIONS = ["what color is the circle ?", "is there a big red square on the left of the star ?", "shape ?"]
ANSWERS = ["red", "no , there is a small blue triangle", "a circle"]
# longer than any understanding prompt, so the other rows' answer columns reach into their left padding
LONG_ANSWER = " ".join(["a big red circle and"] * 20)


def test_answer_logprobs_batched_equal_unbatched(um: UnifiedModel, images) -> None:
    questions, answers = [*QUESTIONS, "what is there ?"], [*ANSWERS, LONG_ANSWER]
    total, count = um.answer_logprobs(images, questions, answers)
    assert count.tolist() == [2, 9, 3, 101]  # answer words + EOS
    for i in range(4):
        single, single_count = um.answer_logprobs(images[i : i + 1], questions[i : i + 1], answers[i : i + 1])
        assert single_count.item() == count[i].item()
        assert torch.allclose(total[i], single[0], atol=1e-5, rtol=0)
    assert torch.all(total < 0)


def test_answer_logprobs_depend_on_the_image_and_are_differentiable(fresh: UnifiedModel, images) -> None:
    a, _ = fresh.answer_logprobs([images[0]], ["shape ?"], ["a circle"])
    b, _ = fresh.answer_logprobs([images[1]], ["shape ?"], ["a circle"])
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert fresh.model.model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_answers_are_deterministic_and_batch_independent(um: UnifiedModel, images) -> None:
    answers = um.answer(images[:3], QUESTIONS, max_new_tokens=4)
    assert answers == um.answer(images[:3], QUESTIONS, max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    for i, question in enumerate(QUESTIONS):
        alone = um.answer(images[i : i + 1], [question], max_new_tokens=4)
        assert alone == answers[i : i + 1]
    sampled = um.answer(images[:3], QUESTIONS, max_new_tokens=4, temperature=1.0, seed=5)
    assert sampled == um.answer(images[:3], QUESTIONS, max_new_tokens=4, temperature=1.0, seed=5)


def test_judge_probability_is_normalised_over_yes_and_no(um: UnifiedModel, images) -> None:
    prompts = ["a red circle", "a blue square .", "the big star", "green"]
    p_yes = um.judge(images, prompts)
    assert p_yes.shape == (4,) and torch.all((p_yes > 0) & (p_yes < 1))
    # recompute P(yes) / (P(yes) + P(no)) from the raw LM logits of the same prompt
    fmt = um.prompts
    yes, no = fmt.tokenizer.convert_tokens_to_ids(["yes", "no"])
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([fmt.understanding_ids(fmt.judge_question(prompt))])
        with torch.no_grad():
            logits = um.model(input_ids=ids, pixel_values=um.vision([images[i]])).logits[0, -1]
        probs = logits.softmax(-1)
        assert torch.allclose(p_yes[i], probs[yes] / (probs[yes] + probs[no]), atol=1e-5)


def test_judge_generate_parses_answers(um: UnifiedModel, images, monkeypatch: pytest.MonkeyPatch) -> None:
    verdicts = um.judge_generate(images[:2], ["a red circle", "a star"])
    assert len(verdicts) == 2 and all(v in (0, 1, None) for v in verdicts)
    monkeypatch.setattr(um, "answer", lambda *args, **kwargs: ["Yes, it does.", "no", "The score is unclear"])
    assert um.judge_generate(images[:3], ["a", "b", "c"]) == [1, 0, None]
    assert parse_verdict("No. yes") == 0 and parse_verdict("eyes nod") is None


def test_images_may_be_pil_or_arrays_of_any_size(um: UnifiedModel, images) -> None:
    pil = Image.fromarray(images[0])
    a, _ = um.answer_logprobs([images[0]], ["shape ?"], ["a circle"])
    b, _ = um.answer_logprobs([pil], ["shape ?"], ["a circle"])
    assert torch.allclose(a, b)
    wide = np.zeros((20, 90, 3), dtype=np.uint8)
    pixels = um.vision([wide, Image.fromarray(wide).convert("L")])
    assert pixels.shape == (2, 3, 64, 64)
    # letterboxed with the mean colour, which normalises to ~0, exactly like JanusImageProcessor
    assert pixels[0, :, 0, :].abs().max() < 0.01 and pixels[0, :, 32, :].min() < -0.99


def test_bad_understanding_input_raises(um: UnifiedModel, images) -> None:
    with pytest.raises(ValueError, match="mismatched batch: got 2 images, 1 questions, 1 answers"):
        um.answer_logprobs(images[:2], ["shape ?"], ["a circle"])
    with pytest.raises(ValueError, match="mismatched batch"):
        um.answer(images[:1], ["a ?", "b ?"])
    with pytest.raises(ValueError, match="mismatched batch"):
        um.judge(images[:3], ["a"])
    with pytest.raises(ValueError, match="uint8 of shape HxWx3"):
        um.answer([images[0].astype(np.float32)], ["shape ?"])
    with pytest.raises(ValueError, match="uint8 of shape HxWx3"):
        um.answer([images[0][:, :, :1]], ["shape ?"])
    with pytest.raises(ValueError, match="PIL images or uint8"):
        um.answer(["picture.png"], ["shape ?"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        um.answer(images[:1], ["shape ?"], max_new_tokens=0)
    assert um.answer([], []) == []


@pytest.mark.parametrize("template", ["tiny", "janus-pro"])
def test_grouped_answer_logprobs_equal_one_sequence_per_question(
    um: UnifiedModel, images, template: str, janus_pro_dir
) -> None:
    model = um
    if template == "janus-pro":  # same weights without the sidecar: the chat template with a system prompt
        model = load_model(janus_pro_dir)
        assert model.prompts.template == "janus-pro"
    questions = [QUESTIONS, [], ["what is there ?", ""]]  # ragged, one image with none; an empty question
    answers = [ANSWERS, [], [LONG_ANSWER, "red"]]  # (its answer's first token came from a state in the cache)
    total, count = model.grouped_answer_logprobs(images[:3], questions, answers)
    flat_images = [images[0]] * 3 + [images[2]] * 2
    single, single_count = model.answer_logprobs(flat_images, [*QUESTIONS, "what is there ?", ""],
                                                 [*ANSWERS, LONG_ANSWER, "red"])
    assert count.tolist() == single_count.tolist()
    assert torch.allclose(total, single, atol=1e-4, rtol=0)


def test_grouped_answer_logprobs_train_the_vision_tower(fresh: UnifiedModel, images) -> None:
    total, _ = fresh.grouped_answer_logprobs(images[:2], [["shape ?", "color ?"], ["shape ?"]], [["a", "b"], ["c"]])
    total.sum().backward()
    assert fresh.model.model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        fresh.grouped_answer_logprobs(images[:1], [["a ?", "b ?"]], [["x"]])
    with pytest.raises(ValueError, match=r"questions\[0\] must be a list with one item per example, got a single str"):
        fresh.grouped_answer_logprobs(images[:1], ["Wha"], ["red"])  # one string per image: not 3 one-letter rows


@pytest.mark.parametrize("method", ["reflect", "judge_generate"])
def test_the_prompt_methods_refuse_a_single_string(um: UnifiedModel, images, method: str) -> None:
    """`reflect([image], "x")` answered one prompt per character, in silence; "ab" judged "a" on one image, "b" on
    the other."""
    with pytest.raises(ValueError, match="prompts must be a list with one item per example, got a single str"):
        getattr(um, method)(images[:2], "ab")


def test_answers_past_the_context_are_refused_by_the_library_too(um: UnifiedModel, images) -> None:
    """`sample_answers(..., max_new_tokens=520)` decoded to position 590 of a 512 context, and a 1001-token answer
    was scored, in silence (`unigap ask` refused the first)."""
    with pytest.raises(UserError, match=r"^max_new_tokens 520: with the question and its image \(\d+ positions\) "
                                        r"more than the model's context of 512; at most \d+$"):
        um.sample_answers(images[:1], ["what color?"], max_new_tokens=520, temperature=0.0)
    with pytest.raises(UserError, match=r"^answers\[1\] \(1001 tokens\): with the question and its image"):
        um.answer_logprobs(images[:2], ["what color?"] * 2, ["red", "red " * 1000])


def test_length_buckets_cover_every_row_once_and_cut_padding() -> None:
    from unigap.model.understanding import length_buckets

    lengths = [10, 30, 9, 11, 29, 10, 8, 12]
    buckets = length_buckets(lengths, max_buckets=2)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in b) for b in buckets] == [[8, 9, 10, 10, 11, 12], [29, 30]]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    assert padded == 6 * 12 + 2 * 30 < len(lengths) * 30
    assert length_buckets([5, 5, 5]) == [[0, 1, 2]]  # equal lengths need one run
    assert length_buckets([]) == []


def test_a_word_the_tokenizer_does_not_know_is_a_warning(um: UnifiedModel, images) -> None:
    with pytest.warns(UserWarning, match="the tokenizer does not know 'magenta': each reads as <unk>"):
        um.judge(images[:1], ["a magenta circle"])


@pytest.mark.parametrize("shape", [(384, 384), (200, 300), (101, 37), (5, 500), (500, 3)])
def test_pixels_equal_transformers_janus_image_processor(shape: tuple[int, int]) -> None:
    """Including a very wide or tall image, whose short side the processor scales to no less than 14 px (`min_size`);
    unigap made it 1 px."""
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from unigap.model.images import pixel_tensor

    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    processor = JanusImageProcessorPil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixel_tensor([image], 384, (0.5,) * 3, (0.5,) * 3), theirs, atol=1e-6)


def test_an_image_without_pixels_is_refused(um: UnifiedModel) -> None:
    for empty in (np.zeros((0, 5, 3), dtype=np.uint8), Image.new("RGB", (5, 0))):
        with pytest.raises(ValueError, match="an image must have pixels"):
            um.answer([empty], ["shape ?"])
