"""Image sampling and teacher-forced image scoring against transformers' own image generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from unigap.model import UnifiedModel, load_model
from unigap.model.decoding import left_pad

SAME_LENGTH = ["a red circle", "a blue square", "the big star"]
MIXED_LENGTH = ["red", "a small green triangle on the left", "the big star"]


class _ConditionalHalf(LogitsProcessor):
    """Keeps the conditional half of the doubled batch: transformers' image generate with no CFG mix
    (its guidance_scale <= 1 path appends no CFG processor and then fails on the 2B-row scores)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores[: input_ids.shape[0]]


def _transformers_greedy(um: UnifiedModel, prompts: list[str], cfg_scale: float | None) -> torch.LongTensor:
    ids, mask = left_pad([um.prompts.generation_ids(p) for p in prompts], um.prompts.ids.pad)
    config = GenerationConfig(
        do_sample=False,
        guidance_scale=cfg_scale if cfg_scale is not None else 1.0,
        bos_token_id=um.prompts.ids.bos,
        pad_token_id=um.prompts.ids.pad,
        eos_token_id=um.prompts.ids.eos,
        generation_kwargs={"boi_token_id": um.prompts.ids.boi},
        max_length=ids.shape[1] + um.num_image_tokens,
    )
    processors = LogitsProcessorList([_ConditionalHalf()] if cfg_scale is None else [])
    return um.model.generate(
        ids, attention_mask=mask, generation_mode="image", generation_config=config, logits_processor=processors
    )


@pytest.mark.parametrize("cfg_scale", [2.0, None])
def test_greedy_matches_transformers_image_generate(um: UnifiedModel, cfg_scale: float | None) -> None:
    ours = um.generate_images(SAME_LENGTH, cfg_scale=cfg_scale, temperature=0.0)
    theirs = _transformers_greedy(um, SAME_LENGTH, cfg_scale)
    assert ours.shape == (3, um.num_image_tokens)
    assert torch.equal(ours, theirs)
    assert len(set(map(tuple, ours.tolist()))) == 3  # different prompts give different images


def test_batching_with_padding_changes_nothing(um: UnifiedModel) -> None:
    batched, batched_lp = um.generate_images(MIXED_LENGTH, cfg_scale=3.0, temperature=0.0, return_logprobs=True)
    for row, prompt in enumerate(MIXED_LENGTH):
        single, single_lp = um.generate_images([prompt], cfg_scale=3.0, temperature=0.0, return_logprobs=True)
        assert torch.equal(batched[row], single[0])
        assert torch.allclose(batched_lp[row], single_lp[0], atol=1e-4)
        # one prompt at a time there is no padding, where transformers agrees with us
        assert torch.equal(single, _transformers_greedy(um, [prompt], 3.0))


@pytest.mark.parametrize("cfg_scale", [None, 2.5])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_image_logprobs_equal_sampling_logprobs(um: UnifiedModel, cfg_scale: float | None, temperature: float) -> None:
    tokens, step_lp = um.generate_images(
        MIXED_LENGTH, n_per_prompt=2, cfg_scale=cfg_scale, temperature=temperature, seed=3, return_logprobs=True
    )
    prompts = [p for p in MIXED_LENGTH for _ in range(2)]
    total, count = um.image_logprobs(prompts, tokens, cfg_scale=cfg_scale)
    assert torch.all(count == um.num_image_tokens)
    assert torch.allclose(total, step_lp.sum(dim=-1), atol=1e-4, rtol=0)
    assert torch.all(step_lp <= 0)


def test_cfg_changes_scores_and_scale_one_is_conditional(um: UnifiedModel) -> None:
    tokens = um.generate_images(SAME_LENGTH, cfg_scale=None, temperature=1.0, seed=0)
    cond, _ = um.image_logprobs(SAME_LENGTH, tokens)
    one, _ = um.image_logprobs(SAME_LENGTH, tokens, cfg_scale=1.0)
    mixed, _ = um.image_logprobs(SAME_LENGTH, tokens, cfg_scale=4.0)
    assert torch.equal(cond, one)
    assert not torch.allclose(cond, mixed, atol=1e-3)


def test_dropped_rows_are_scored_from_the_unconditional_prompt(um: UnifiedModel) -> None:
    """Prompt dropout in training: a dropped row's log-probs are the unconditional branch's, which CFG at scale 0
    samples from; the other rows stay conditional."""
    tokens = um.generate_images(SAME_LENGTH, cfg_scale=None, temperature=1.0, seed=0)
    dropped = torch.tensor([True, False] * (len(SAME_LENGTH) // 2) + [True] * (len(SAME_LENGTH) % 2))
    got = um.image_token_logprobs(SAME_LENGTH, tokens, dropped=dropped)
    cond = um.image_token_logprobs(SAME_LENGTH, tokens)
    uncond = um.image_token_logprobs(SAME_LENGTH, tokens, cfg_scale=0.0)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    torch.testing.assert_close(got[dropped], uncond[dropped], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[~dropped], cond[~dropped], atol=1e-4, rtol=1e-4)


def test_a_dropout_mask_is_refused_under_cfg_or_at_the_wrong_length(um: UnifiedModel) -> None:
    tokens = um.generate_images(SAME_LENGTH[:2], cfg_scale=None, temperature=1.0, seed=0)
    with pytest.raises(ValueError, match="under guidance every row has its own twins"):
        um.image_token_logprobs(SAME_LENGTH[:2], tokens, cfg_scale=5.0, dropped=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"one flag per row \(2\), got shape \(1,\)"):
        um.image_token_logprobs(SAME_LENGTH[:2], tokens, dropped=torch.tensor([True]))
    with pytest.raises(ValueError, match="dropped must hold flags"):  # (a probability cast to True: dropped)
        um.image_token_logprobs(SAME_LENGTH[:2], tokens, dropped=[0.5, 0.0])
    with pytest.raises(ValueError, match="dropped must hold flags"):
        um.image_token_logprobs(SAME_LENGTH[:2], tokens, dropped=torch.tensor([0, 2]))
    kept = um.image_token_logprobs(SAME_LENGTH[:2], tokens, dropped=[1, 0])  # 0 and 1 are flags
    torch.testing.assert_close(kept, um.image_token_logprobs(SAME_LENGTH[:2], tokens, dropped=[True, False]))


def test_image_logprobs_is_differentiable(fresh: UnifiedModel) -> None:
    tokens = fresh.generate_images(SAME_LENGTH[:2], cfg_scale=None, temperature=1.0, seed=1)
    total, _ = fresh.image_logprobs(SAME_LENGTH[:2], tokens, cfg_scale=2.0)
    total.sum().backward()
    head = fresh.model.model.generation_head.vision_head.weight
    layer = fresh.model.model.language_model.layers[0].self_attn.q_proj.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    assert layer.grad is not None and layer.grad.abs().sum() > 0


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(um: UnifiedModel) -> None:
    state = torch.get_rng_state()
    first = um.generate_images(SAME_LENGTH, n_per_prompt=2, cfg_scale=2.0, temperature=1.0, seed=7)
    again = um.generate_images(SAME_LENGTH, n_per_prompt=2, cfg_scale=2.0, temperature=1.0, seed=7)
    other = um.generate_images(SAME_LENGTH, n_per_prompt=2, cfg_scale=2.0, temperature=1.0, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (6, um.num_image_tokens) and first.dtype == torch.long
    assert not torch.equal(first[0], first[1])  # two samples of one prompt differ


def test_samples_are_prompt_major(um: UnifiedModel) -> None:
    greedy = um.generate_images(SAME_LENGTH[:2], n_per_prompt=2, cfg_scale=2.0, temperature=0.0)
    assert torch.equal(greedy[0], greedy[1]) and torch.equal(greedy[2], greedy[3])
    assert not torch.equal(greedy[1], greedy[2])


def test_bad_image_tokens_and_counts_raise(um: UnifiedModel, tmp_path: Path) -> None:
    n, size = um.num_image_tokens, um.codebook_size
    good = torch.zeros((2, n), dtype=torch.long)
    with pytest.raises(ValueError, match="must lie in"):
        um.image_logprobs(["a", "b"], torch.full((2, n), size))
    with pytest.raises(ValueError, match="must lie in"):
        um.decode_tokens(torch.full((1, n), -1))
    with pytest.raises(ValueError, match=f"shape \\[batch, {n}\\]"):
        um.image_logprobs(["a", "b"], good[:, :-1])
    with pytest.raises(ValueError, match="integer ids"):
        um.image_logprobs(["a", "b"], good.float())
    small = torch.full((1, n), 3, dtype=torch.uint8)  # ids of uint8 inside a codebook over 255: fine (refused, as
    assert len(um.decode_tokens(small)) == 1  # `max() >= size` compared in uint8, where the bound wraps)
    adapted = load_model("tiny")
    adapted.add_lora(rank=2, alpha=4)
    with pytest.raises(ValueError, match="this model carries a LoRA adapter: save it with save_adapter, or write "
                                         "base \\+ adapter as one checkpoint with `unigap merge"):
        adapted.save(tmp_path / "unused")  # (a regression writes its checkpoint there, not into the repository)
    with pytest.raises(ValueError, match="mismatched batch: got 3 prompts, 2 image token rows"):
        um.image_logprobs(["a", "b", "c"], good)
    with pytest.raises(ValueError, match="n_per_prompt"):
        um.generate_images(["a"], n_per_prompt=0)
    with pytest.raises(ValueError, match="temperature"):
        um.generate_images(["a"], temperature=-1.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        um.generate_images(["a"], cfg_scale=-2.0)
