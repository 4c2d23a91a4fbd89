"""The image-token sampler draws from the same distribution as transformers' image generate, reproducibly; the
fixed-shape step that CUDA graphs replay computes what the eager step computes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from transformers import GenerationConfig

from unigap.model import UnifiedModel, load_model, save_random_tiny
from unigap.model.decoding import left_pad
from unigap.model.generation import guided, prompt_batch, sample_from_prefix
from unigap.model.sampler import GraphedStep, StaticCache

ROWS = 512
PROMPT = "a red circle"


def _theirs(um: UnifiedModel, rows: int, cfg_scale: float) -> torch.Tensor:
    ids, mask = left_pad([um.prompts.generation_ids(PROMPT)] * rows, um.prompts.ids.pad)
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, guidance_scale=cfg_scale, bos_token_id=um.prompts.ids.bos,
        pad_token_id=um.prompts.ids.pad, eos_token_id=um.prompts.ids.eos,
        generation_kwargs={"boi_token_id": um.prompts.ids.boi}, max_length=ids.shape[1] + um.num_image_tokens,
    )
    torch.manual_seed(0)
    return um.model.generate(ids, attention_mask=mask, generation_mode="image", generation_config=config)


@pytest.fixture(scope="module")
def peaked(tmp_path_factory: pytest.TempPathFactory) -> UnifiedModel:
    """A small random model (16 image tokens) whose image logits are scaled up: a fresh model's are nearly uniform
    (entropy 5.536 of 5.545 nats), which any sampler of near-uniform tokens would match; these have 4.1, so CFG
    3.5 for 3 or temperature 0.95 for 1 fails the pooled test below (p < 1e-3)."""
    words = ["a", "red", "circle"]
    um = load_model(save_random_tiny(tmp_path_factory.mktemp("peaked"), words, image_size=32, hidden_size=128,
                                     num_layers=2))
    with torch.no_grad():
        um.model.model.generation_head.vision_head.weight.mul_(40.0)
    return um


@pytest.fixture(scope="module")
def samples(peaked: UnifiedModel) -> tuple[torch.Tensor, torch.Tensor]:
    ours = peaked.generate_images([PROMPT], n_per_prompt=ROWS, cfg_scale=3.0, temperature=1.0, seed=1)
    return ours, _theirs(peaked, ROWS, 3.0)


def test_first_tokens_follow_the_model_s_guided_distribution(peaked: UnifiedModel, samples) -> None:
    """Goodness of fit of the first token against softmax of the CFG-mixed logits, in 8 equal-mass classes."""
    um = peaked
    ids, mask = prompt_batch(um.prompts, [PROMPT], cfg=True, device=um.device)
    with torch.no_grad():
        hidden = um.model.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        probs = torch.softmax(guided(um.model.model.generation_head(hidden).float(), 3.0), -1)[0].numpy()
    order = np.argsort(probs)
    classes = np.zeros(len(probs), dtype=int)
    classes[order] = np.minimum((np.cumsum(probs[order]) * 8).astype(int), 7)
    for tokens in samples:
        observed = np.bincount(classes[tokens[:, 0].numpy()], minlength=8)
        expected = np.bincount(classes, weights=probs, minlength=8) * len(tokens)
        keep = expected > 5
        assert chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue > 1e-3


def test_token_frequencies_match_transformers_generate(samples) -> None:
    """All 16 positions pooled, tokens in 16 classes of equal frequency: the two samplers are indistinguishable."""
    ours, theirs = (s.flatten().numpy() for s in samples)
    counts = np.bincount(np.concatenate([ours, theirs]))
    order = np.argsort(counts)
    classes = np.zeros(len(counts), dtype=int)
    classes[order] = np.minimum((np.cumsum(counts[order]) / counts.sum() * 16).astype(int), 15)
    table = np.stack([np.bincount(classes[ours], minlength=16), np.bincount(classes[theirs], minlength=16)])
    table = table[:, table.sum(axis=0) > 0]
    assert chi2_contingency(table).pvalue > 1e-3


def test_the_same_seed_gives_the_same_images(um: UnifiedModel) -> None:
    first = um.generate_images(["a red circle", "a big blue square"], n_per_prompt=3, seed=7)
    assert torch.equal(first, um.generate_images(["a red circle", "a big blue square"], n_per_prompt=3, seed=7))
    assert not torch.equal(first, um.generate_images(["a red circle", "a big blue square"], n_per_prompt=3, seed=8))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_cuda_graph_step_samples_what_the_eager_step_samples(tiny_dir: Path, temperature: float) -> None:
    """Run without CUDA, the graph's fixed-shape step (tensor slot, attention over the whole buffer under the key
    mask) gives the eager step's tokens and log-probs: mixed prompt lengths (left padding), CFG, fp32 on a CPU."""
    um = load_model(tiny_dir, "cpu", torch.float32)
    prompts = ["a red circle", "is there a big blue square on the left of a small green triangle ?"]
    ids, mask = prompt_batch(um.prompts, prompts, cfg=True, device=um.device)
    embeds = um.model.get_input_embeddings()(ids)
    runs = [sample_from_prefix(um.model, um.prompts, embeds, mask, 2, 3.0, temperature, seed=5, cuda_graphs=graphs)
            for graphs in (False, True)]
    assert torch.equal(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])


def test_the_cuda_graph_step_runs_under_bf16_autocast_on_fp32_weights(tiny_dir: Path) -> None:
    """`refine train --bf16` samples under autocast: an fp32 prefill fills a float32 cache, each step's keys come in
    bf16, and the fixed-shape store (`index_copy_`, which does not cast) raised at the first rollout on CUDA."""
    um = load_model(tiny_dir, "cpu", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids, mask = prompt_batch(um.prompts, ["a red circle"], cfg=True, device=um.device)
        embeds = um.model.get_input_embeddings()(ids)
        tokens, _ = sample_from_prefix(um.model, um.prompts, embeds, mask, 1, 5.0, 1.0, seed=0, cuda_graphs=True)
    assert tokens.shape == (1, um.num_image_tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_replayed_cuda_graphs_sample_what_the_eager_step_samples(tiny_dir: Path) -> None:
    """On a GPU, in fp32 without TF32: greedy tokens and log-probs of captured and replayed steps against eager."""
    um = load_model(tiny_dir, "cuda", torch.float32)
    prompts = ["a red circle", "is there a big blue square on the left of a small green triangle ?"]
    ids, mask = prompt_batch(um.prompts, prompts, cfg=True, device=um.device)
    embeds = um.model.get_input_embeddings()(ids)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        runs = [sample_from_prefix(um.model, um.prompts, embeds, mask, 2, 3.0, 0.0, seed=5, cuda_graphs=graphs)
                for graphs in (False, True)]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    assert torch.equal(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-4)


def test_a_failed_capture_falls_back_to_the_eager_step(um: UnifiedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_graphs(*args: object, **kwargs: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", no_graphs)  # on a GPU the capture itself fails
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # on a CPU: Stream() fails
    ids, mask = prompt_batch(um.prompts, [PROMPT], cfg=False, device=um.device)
    with torch.no_grad():
        out = um.model.model.language_model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = StaticCache.from_prefill(out.past_key_values, mask, 3)
        step = GraphedStep(um.model, cache, capture=True)
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed, sampling eagerly"):
            logits = step(torch.tensor([5], device=um.device), torch.tensor([ids.shape[1]], device=um.device),
                          slot=ids.shape[1])
    assert logits.shape == (1, um.codebook_size) and step.graph is None
    assert cache.valid[0].tolist() == [True] * (ids.shape[1] + 1) + [False] * 2


def test_unseeded_calls_follow_torch_manual_seed_and_numpy_seeds_work(um: UnifiedModel) -> None:
    torch.manual_seed(0)
    first = um.generate_images(["a red circle"], n_per_prompt=2)
    torch.manual_seed(0)
    assert torch.equal(first, um.generate_images(["a red circle"], n_per_prompt=2))
    seeded = um.generate_images(["a red circle"], seed=3)
    assert torch.equal(um.generate_images(["a red circle"], seed=np.int64(3)), seeded)
    with pytest.raises(ValueError, match="seed must be an integer or None, got 1.5"):
        um.generate_images(["a red circle"], seed=1.5)


def test_a_single_string_is_not_read_as_one_prompt_per_character(um: UnifiedModel) -> None:
    with pytest.raises(ValueError, match="prompts must be a list with one item per example, got a single str"):
        um.generate_images("a red circle", seed=0)
    with pytest.raises(ValueError, match="each prompt must be a string, got None"):
        um.generate_images([None], seed=0)
    guidance = r"cfg_scale must be a number from 0 to 1e\+06 \(or None: no guidance\), got "
    with pytest.raises(ValueError, match=guidance + "inf"):
        um.generate_images(["a red circle"], cfg_scale=float("inf"), seed=0)
    with pytest.raises(ValueError, match=guidance + "'5'"):  # (a TypeError)
        um.generate_images(["a red circle"], cfg_scale="5", seed=0)
    with pytest.raises(ValueError, match="seed must fit in 64 bits"):
        um.generate_images(["a red circle"], seed=2**70)
    sampled = r"temperature must be >= 0 \(0 = greedy\) and finite \(a positive one from 1e-06 to 1e\+06\), got "
    for temperature in (None, "1", True):  # (a TypeError from the comparison; True read as 1)
        with pytest.raises(ValueError, match=sampled + repr(temperature)):
            um.generate_images(["a red circle"], temperature=temperature, seed=0)
    context = r"positions, more than the model's context of 512"  # (sampled past it: silent nonsense)
    with pytest.raises(ValueError, match=r"tokens and its image 63: \d+ " + context):
        um.generate_images(["a red circle " * 300], seed=0)
    with pytest.raises(ValueError, match=r"with its image: \d+ " + context):
        um.answer([np.zeros((64, 64, 3), np.uint8)], ["what " * 600])
    with pytest.raises(ValueError, match=sampled + r"1e\+39"):  # (float32's inf: every probability NaN)
        um.answer([np.zeros((64, 64, 3), np.uint8)], ["?"], temperature=1e39, seed=0)
    tokens = torch.zeros((1, um.num_image_tokens), dtype=torch.long)
    with pytest.raises(ValueError, match=r"temperature must be > 0 and finite \(a positive one from 1e-06 to 1e\+06\)"):
        um.image_token_logprobs(["a red circle"], tokens, temperature=None)
    image = um.decode_tokens(um.generate_images(["a red circle"], seed=0))[0]
    with pytest.raises(ValueError, match="questions must be a list"):
        um.answer([image], "?")
    with pytest.raises(ValueError, match="images must be a list with one item per example, got a single Image"):
        um.judge(image, ["a red circle"])
    with pytest.raises(ValueError, match="images must be a list with one item per example, got a single Image"):
        um.encode_images(image)
    with pytest.raises(ValueError, match=r"images must be a list .*, got a single ndarray of shape \(64, 64, 3\)"):
        um.encode_images(np.asarray(image))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 1.5"):
        um.answer([image], ["what shape ?"], max_new_tokens=1.5)


def test_a_temperature_or_guidance_that_overflows_the_logits_is_refused_before_sampling(um: UnifiedModel) -> None:
    """T = 1e-38 or CFG 1e38 made the logits inf and every probability NaN: torch's "probability tensor contains
    either inf, nan or element < 0" after the work; the bounds are far past any use."""
    from unigap.errors import UserError

    with pytest.raises(UserError, match=r"from 1e-06 to 1e\+06\), got 1e-38"):
        um.generate_images(["a red circle"], temperature=1e-38, seed=0)
    with pytest.raises(UserError, match=r"from 0 to 1e\+06 \(or None: no guidance\), got 1e\+38"):
        um.generate_images(["a red circle"], cfg_scale=1e38, seed=0)
    with pytest.raises(UserError, match=r"from 1e-06 to 1e\+06"):
        um.answer([np.zeros((64, 64, 3), np.uint8)], ["What color?"], temperature=1e-300)
    greedy = um.generate_images(["a red circle"], temperature=0, seed=0)
    assert torch.equal(um.generate_images(["a red circle"], temperature=1e-6, seed=0), greedy)  # (the limit's value)
    assert um.generate_images(["a red circle"], cfg_scale=1e6, seed=0).shape == greedy.shape


def test_an_empty_list_of_image_tokens_is_no_rows(um) -> None:
    """`decode_tokens([])` said "image tokens must be integer ids, got dtype torch.float32": no float was passed."""
    assert um.decode_tokens([]) == []
    total, count = um.image_logprobs([], [])
    assert total.shape[0] == count.shape[0] == 0
