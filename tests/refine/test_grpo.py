"""R3's GRPO: the stage rewards and advantages, the clipped loss and its KL, the trainer (stages, buffer, resume) and
`unigap refine train`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from unigap.cli import main
from unigap.errors import UserError
from unigap.evaluate.data import distinct_prompts
from unigap.evaluate.generation import self_p_yes
from unigap.model import UnifiedModel, load_model
from unigap.world.scoring import image_score
from unigap import distributed
from unigap.refine.grpo import (LOGGED_KEYS, GRPOTrainer, audit_guard, first_alarm, logged_keys, step_means,
                                 train_grpo)
from unigap.refine.grpo_config import GRPOConfig
from unigap.model.understanding import Completions
from unigap.refine.grpo_loss import advantages, image_loss, image_token_loss, refine_rewards, text_loss, token_loss
from unigap.refine.rollout import WEIGHT, Buffered, reward_for
from unigap.train.checkpoint import load_checkpoint, save_checkpoint

TINY_RUN = {"steps": 4, "prompts_per_step": 1, "num_generations": 3, "eval_n": 0, "checkpoint_every": 2}


def test_r3_stage_rewards() -> None:
    prev = [1.0, 0.5, 0.5, 0.5, 1.0]
    new = [None, 1.0, 0.25, None, 0.5]
    stopped = [True, False, False, False, False]
    format_ok = [True, True, True, False, True]
    deltas, text, image = refine_rewards(prev, new, stopped, format_ok, [p == 1.0 for p in prev])
    assert deltas == [1.0, 0.5, -0.25, 0.0, -0.5]  # a correct stop earns 1; a format failure makes nothing
    assert text == [2.0, 1.5, 0.75, 0.0, 0.5]  # f + Δ·f
    assert image == [1.0, 1.0, 0.25, 0.5, 0.5]  # no image made (a stop, a format failure): the start carried
    assert refine_rewards([0.5], [None], [True], [True], [False])[0] == [0.0]  # stopping on an imperfect image: 0
    assert refine_rewards([0.7], [None], [True], [True], [True])[0] == [1.0]  # perfect is the reward's verdict


def test_rewards_by_name_score_and_judge_perfection_as_their_judge_does() -> None:
    um = load_model("tiny")
    spec = distinct_prompts(2, 0, 0, split="train")[1]
    tokens = um.generate_images([spec.text], 3, 5.0, 1.0, 0)
    images = um.decode_tokens(tokens)
    verifier, own = reward_for("verifier"), reward_for("self-pyes")
    assert verifier.score(um, images, spec) == [image_score(im, spec, im.size[0]) for im in images]
    assert verifier.perfect(1.0) and not verifier.perfect(0.99)  # graded: perfect only when satisfied
    assert own.score(um, images, spec) == pytest.approx(self_p_yes(um, images, [spec.text] * 3))
    assert own.perfect(0.5) and not own.perfect(0.49)  # a judge's score is perfect where the judge accepts
    binary = reward_for("verifier-binary")  # the verdict: what the loop's accuracy counts
    assert binary.score(um, images, spec) == [float(s == 1.0) for s in verifier.score(um, images, spec)]
    assert binary.perfect(1.0) and not binary.perfect(0.0)
    with pytest.raises(UserError, match="unknown judge 'nope'"):
        reward_for("nope")
    before = own.score(um, images, spec)
    um.add_lora(4, 8.0, 0.0)
    with torch.no_grad():
        for name, param in um.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    assert own.score(um, images, spec) != pytest.approx(before)  # the adapter changed the model's own judge
    assert reward_for("base-pyes").score(um, images, spec) == pytest.approx(before)  # the frozen judge did not move


def test_advantages_are_centred_per_group_and_unscaled_by_default() -> None:
    adv = advantages([1.0, 0.0, None, 0.5])
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    scaled = advantages([1.0, 0.0, 0.5], "group")
    assert scaled.tolist() == pytest.approx([0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4), 0.0], rel=1e-5)  # std 0.5
    assert advantages([None, None]).tolist() == [0.0, 0.0]


def test_on_policy_loss_is_the_policy_gradient_and_k3_vanishes_at_the_reference() -> None:
    logits = torch.randn(2, 5, requires_grad=True)
    logprobs = torch.log_softmax(logits, dim=-1)[:, :3]
    mask = torch.tensor([[True, True, True], [False, True, True]])
    adv = torch.tensor([1.0, -2.0])
    out = token_loss(logprobs, logprobs.detach(), logprobs.detach(), mask, adv, epsilon=0.2, epsilon_high=0.2,
                     beta=0.5)
    per_token = out.loss
    assert torch.equal(out.kl, torch.zeros_like(out.kl))  # KL to itself
    assert not out.low_clipped.any() and not out.high_clipped.any()  # the ratio is 1 at a rollout's first update
    loss = text_loss(per_token, mask)
    loss.backward()
    expected_logits = logits.detach().clone().requires_grad_(True)
    expected = -(torch.where(mask, torch.log_softmax(expected_logits, -1)[:, :3] * adv[:, None], 0.0)).sum() / 5
    expected.backward()
    assert torch.allclose(logits.grad, expected_logits.grad, atol=1e-6)
    ref = logprobs.detach() - 0.3
    kl = token_loss(logprobs, logprobs.detach(), ref, mask, adv, 0.2, 0.2, 0.5).kl
    assert torch.allclose(kl[mask], torch.full_like(kl[mask], torch.exp(torch.tensor(-0.3)) + 0.3 - 1))
    images = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]])  # each image's mean (2, 6), then their mean
    assert image_loss(images).item() == pytest.approx(4.0)


def test_a_moved_policy_is_clipped_asymmetrically_and_counted() -> None:
    """Later updates on one rollout (`num_iterations`): the ratio to the sampling policy is clipped to
    [1 − ε, 1 + ε_high] in the advantage's direction only, where the gradient then stops, as TRL clips."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    ratios = torch.tensor([[1.25, 1.35, 0.7], [1.25, 0.7, 0.9]])  # row 0: advantage +1, row 1: advantage −1
    logprobs = (old + torch.log(ratios)).requires_grad_(True)
    mask = torch.ones_like(ratios, dtype=torch.bool)
    out = token_loss(logprobs, old, None, mask, torch.tensor([1.0, -1.0]), epsilon=0.2, epsilon_high=0.28, beta=0.0)
    assert out.high_clipped.tolist() == [[False, True, False], [False, False, False]]  # 1.35 > 1.28, A > 0
    assert out.low_clipped.tolist() == [[False, False, False], [False, True, False]]  # 0.7 < 0.8, A < 0
    out.loss.sum().backward()
    assert logprobs.grad[0, 1] == 0 and logprobs.grad[1, 1] == 0  # clipped: no gradient
    assert logprobs.grad[0, 0] != 0 and logprobs.grad[0, 2] != 0 and logprobs.grad[1, 0] != 0  # 1.25 < 1.28: kept


def test_an_image_is_clipped_as_one_on_its_mean_log_prob_as_r3_does() -> None:
    """R3 clips an image's ratio exp(mean log π − mean log π_old), not each token's: an image whose tokens moved
    both ways but whose mean stayed inside the clip range keeps its whole gradient, and one whose mean moved out is
    clipped on every token. At a rollout's first update the gradient is the per-token one."""
    old = torch.log(torch.full((2, 4), 0.5))
    ratios = torch.tensor([[1.5, 1.5, 0.6, 0.6], [1.3, 1.3, 1.3, 1.3]])  # row 0: mean log-ratio ≈ −0.05; row 1: 0.26
    logprobs = (old + torch.log(ratios)).requires_grad_(True)
    out = image_token_loss(logprobs, old, None, torch.tensor([1.0, 1.0]), 0.2, 0.2, 0.0)
    assert out.high_clipped.tolist() == [[False] * 4, [True] * 4]  # per token, row 0's 1.5s would be clipped
    image_loss(out.loss).backward()
    assert (logprobs.grad[0] != 0).all() and (logprobs.grad[1] == 0).all()
    fresh = torch.randn(3, 5, requires_grad=True)
    adv, ref = torch.tensor([0.5, -1.0, 2.0]), fresh.detach() - 0.1
    per_image = image_loss(image_token_loss(fresh, fresh.detach(), ref, adv, 0.2, 0.2, 0.1).loss)
    per_token = image_loss(token_loss(fresh, fresh.detach(), ref, torch.ones(3, 5, dtype=torch.bool), adv, 0.2, 0.2,
                                      0.1).loss)
    assert per_image.item() == pytest.approx(per_token.item())
    assert torch.allclose(torch.autograd.grad(per_image, fresh)[0], torch.autograd.grad(per_token, fresh)[0])


def test_a_refine_groups_image_baseline_counts_the_branches_that_stopped_at_the_starting_score() -> None:
    """R3 carries a stopped branch's image and score forward, so the image baseline is the mean over all G branches
    and only the made images train: start 0.5, branches stop, stop, 1.0, 0.5 → advantages +0.375 and −0.125 (the
    made images alone would give ±0.25)."""
    from unigap.model.decoding import token_logprobs
    from unigap.refine.rollout import Rollout, _part, rollout_loss

    _, _, image = refine_rewards([0.5] * 4, [None, None, 1.0, 0.5], [True, True, False, False], [True] * 4,
                                 [False] * 4)
    part = _part(None, "image", lambda: None, image, GRPOConfig(beta=0.0), rows=[2, 3])
    assert part.advantage.tolist() == pytest.approx([0.375, -0.125])
    assert part.rewards == (0.5, 0.5, 1.0, 0.5)  # the group's, as `scale_rewards="batch"` reads them
    # R3's images' loss is a sum over all G branches' images / G (a stop's image trains with advantage 0), and its
    # images' policy term weighs `image_loss_weight` (R3's mse_weight 2) against the reflections'
    logits, tokens = torch.randn(2, 5, 7, requires_grad=True), torch.randint(0, 7, (2, 5))
    logprobs = []

    def score(rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs.append(token_logprobs(logits, tokens))
        logprobs[-1].retain_grad()
        return logprobs[-1], torch.ones(2, 5, dtype=torch.bool)

    rollout_loss(Rollout((replace(part, score=score),), [], {}), GRPOConfig(beta=0.0))  # (back-propagates)
    assert part.share == 0.5
    assert torch.allclose(logprobs[0].grad, -2.0 * 0.5 * torch.tensor([[0.375], [-0.125]]).expand(2, 5) / 5 / 2)


def test_reflections_are_scored_as_the_tokens_sampled(monkeypatch) -> None:
    """A refine group scores each reflection as the ids sampled: a completion cut off before its EOS is scored
    without an EOS it never sampled (its text tokenised again would have one)."""
    from unigap.refine.rollout import refine_group

    um = load_model("tiny")
    note = um.prompts.answer_ids("make the red circle blue")
    cut = note[:3]  # no EOS: `max_completion_length` stopped it
    monkeypatch.setattr(um, "sample_answers", lambda images, *a, **k: Completions(
        ["make the red circle blue", "make the"], [note, cut], [True, False]))
    spec = distinct_prompts(1, 0, 0, split="train")[0]
    config = GRPOConfig(num_generations=2, beta=0.0)
    start = um.generate_images([spec.text], 1, 5.0, 1.0, 0)[0].tolist()
    rollout = refine_group(um, Buffered(0, tuple(start), 0.5), spec, config, 1, reward_for("verifier"))
    logprobs, mask = rollout.parts[0].score()
    assert mask.sum(dim=-1).tolist() == [len(note), len(cut)]
    image = um.decode_tokens(torch.tensor([start]))[0]
    question = um.prompts.reflect_question(spec.text)
    expected, _ = um.answer_token_logprobs([image], [question], [cut])
    assert torch.allclose(logprobs[1, -len(cut):], expected[0], atol=1e-5)


def test_a_steps_image_reward_mean_is_per_image_as_trls() -> None:
    """Group A made 16 images averaging 0.9, group B one scoring 0.1: TRL's mean is 0.85, not the groups' 0.5."""
    key = "refine/rewards/verifier/mean"
    a = {key: 0.9, WEIGHT + key: 16.0, "refine/stop_rate": 0.0}
    b = {key: 0.1, WEIGHT + key: 1.0, "refine/stop_rate": 0.5}
    assert step_means([a, b]) == pytest.approx({key: (16 * 0.9 + 0.1) / 17, "refine/stop_rate": 0.25})
    assert step_means([a, {"refine/stop_rate": 1.0}]) == pytest.approx({key: 0.9, "refine/stop_rate": 0.5})


def test_an_update_logs_trls_entropy_clip_and_completion_metrics() -> None:
    """`rollout_loss` on a reflection part: the entropy is the mean over trained tokens of each scored distribution's
    (recorded by the scorer's own `token_logprobs`), a reflection the decoder cut off before its EOS counts as
    clipped, and the scorer's log-probs are what the loss trains."""
    from unigap.model.decoding import token_entropies, token_logprobs
    from unigap.refine.rollout import Part, Rollout, rollout_loss

    logits = torch.randn(2, 4, 6, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 1]])
    mask = torch.tensor([[True, True, True, True], [False, False, True, True]])  # 3 tokens + EOS; 1 token + EOS
    part = Part("text", lambda rows=slice(None): (torch.where(mask, token_logprobs(logits, tokens), 0.0), mask),
                torch.tensor([1.0, -1.0]), None, truncated=(True, False))
    config = GRPOConfig(max_completion_length=3, beta=0.0)
    loss, old, metrics = rollout_loss(Rollout((part,), [], {}), config)
    probs = torch.softmax(logits.detach(), -1)
    entropy = -(probs * probs.log()).sum(-1)
    assert metrics["entropy"] == pytest.approx(float(entropy[mask].mean()), rel=1e-5)
    assert metrics["entropy/text"] == metrics["entropy"] and "entropy/image" not in metrics  # no image part
    assert metrics["completions/clipped_ratio"] == 0.5 and metrics["completions/mean_length"] == 3.0
    assert metrics["clip_ratio/region_mean"] == 0.0 and "kl" not in metrics  # the first update; β = 0
    assert torch.equal(old[0][0], torch.where(mask, token_logprobs(logits, tokens), 0.0).detach())
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with token_entropies() as outer:  # outside a block nothing is recorded; inside, the innermost block records
        token_logprobs(logits, tokens)
        with token_entropies() as inner:
            token_logprobs(logits, tokens)
        token_logprobs(logits, tokens)
    token_logprobs(logits, tokens)
    assert len(inner) == 1 and len(outer) == 2 and torch.allclose(inner[0], entropy)
    assert all(torch.allclose(e, entropy) for e in outer)


@pytest.mark.parametrize("loss_type", ["bnpo", "grpo", "dr_grpo"])
def test_masked_truncated_reflections_train_nothing_but_still_count_as_clipped(loss_type: str) -> None:
    """TRL's `mask_truncated_completions`: a reflection the decoder cut off before its EOS gets no gradient under
    every loss type and leaves the per-token metrics (bnpo: the loss is the other reflections' alone); clipped_ratio
    still counts it, and the image made from it still trains. Off (the default), it trains like any other."""
    from unigap.model.decoding import token_logprobs
    from unigap.refine.rollout import Part, Rollout, rollout_loss

    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 1]])
    mask = torch.tensor([[True, True, True, True], [False, False, True, True]])  # row 0 was cut off

    def run(rows: slice, **changes):
        logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        image_logits = torch.randn(1, 3, 6, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        text = Part("text", lambda _=None: (torch.where(mask[rows], token_logprobs(logits[rows], tokens[rows]), 0.0),
                                     mask[rows]), torch.tensor([1.0, -1.0])[rows], None, truncated=(True, False)[rows])
        image = Part("image", lambda _=None: (token_logprobs(image_logits, tokens[:1, :3]),
                                       torch.ones(1, 3, dtype=torch.bool)), torch.tensor([1.0]), None)
        config = GRPOConfig(max_completion_length=3, beta=0.0, loss_type=loss_type, **changes)
        loss, _, metrics = rollout_loss(Rollout((text, image), [], {}), config)  # (back-propagates)
        return loss, logits.grad, image_logits.grad, metrics

    loss, grad, image_grad, metrics = run(slice(None), mask_truncated_completions=True)
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0 and image_grad.abs().sum() > 0
    assert metrics["completions/clipped_ratio"] == 0.5
    alone, _, _, metrics_alone = run(slice(1, 2))
    assert metrics["entropy"] == pytest.approx(metrics_alone["entropy"])
    image_probs = torch.softmax(torch.randn(1, 3, 6, generator=torch.Generator().manual_seed(1)), -1)
    image_entropy = float(-(image_probs * image_probs.log()).sum(-1).mean())
    assert metrics["entropy/image"] == pytest.approx(image_entropy, rel=1e-5)  # each kind over its own tokens
    assert metrics["entropy"] == pytest.approx((2 * metrics["entropy/text"] + 3 * image_entropy) / 5, rel=1e-5)
    assert metrics["entropy/text"] != pytest.approx(metrics["entropy"])
    if loss_type == "bnpo":
        assert float(loss) == pytest.approx(float(alone))
    _, grad, _, _ = run(slice(None))
    assert grad[0].abs().sum() > 0


def test_rollouts_are_scored_at_the_temperature_they_were_sampled_at(monkeypatch) -> None:
    """TRL scores GRPO's samples under softmax(logits / temperature): every part of both stages (images, reflections,
    edits; π and π_ref alike) is scored at the config's temperature, the one it was sampled at."""
    from unigap.refine.rollout import generation_group, refine_group

    um = load_model("tiny")
    seen: list[tuple[str, float]] = []
    for name in ("image_token_logprobs", "answer_token_logprobs", "edit_token_logprobs"):
        scorer = getattr(um, name)

        def recording(*args, _scorer=scorer, _name=name, **kwargs):
            seen.append((_name, kwargs.get("temperature", args[3] if _name == "answer_token_logprobs" else 1.0)))
            return _scorer(*args, **kwargs)

        monkeypatch.setattr(um, name, recording)
    note = "make the red circle blue"  # (so it edits)
    monkeypatch.setattr(um, "sample_answers", lambda images, *args, **kwargs: Completions(
        [note] * len(images), [um.prompts.answer_ids(note)] * len(images), [True] * len(images)))
    spec = distinct_prompts(1, 0, 0, split="train")[0]
    config = GRPOConfig(num_generations=2, temperature=0.7, beta=0.01)
    generated = generation_group(um, 0, spec, config, 0, reward_for("verifier"))
    refined = refine_group(um, generated.buffered[0], spec, config, 1, reward_for("verifier"))
    for rollout in (generated, refined):
        for part in rollout.parts:
            part.score()
    assert {name for name, _ in seen} == {"image_token_logprobs", "answer_token_logprobs", "edit_token_logprobs"}
    assert all(temperature == 0.7 for _, temperature in seen), seen


def test_a_cfg_scale_of_0_guides_as_it_does_in_eval_and_refine(monkeypatch) -> None:
    """0 is the unconditional distribution everywhere (`unigap eval --cfg 0`, `RefineConfig`); GRPO read it as
    falsy, no guidance, so its images and its before/after loop were drawn from another distribution."""
    import unigap.refine.grpo as grpo
    from unigap.refine.rollout import generation_group

    um, seen = load_model("tiny"), []
    for name in ("generate_images", "image_token_logprobs"):
        method = getattr(um, name)
        monkeypatch.setattr(um, name, lambda *a, _m=method, _n=name, **k: seen.append((_n, a[2])) or _m(*a, **k))
    monkeypatch.setattr(grpo, "run_loop", lambda *a, **k: seen.append(("run_loop", a[6])) or [])
    config = GRPOConfig(num_generations=2, beta=0.0, cfg_scale=0.0, eval_n=1, eval_rounds=1)
    generation_group(um, 0, distinct_prompts(1, 0, 0, split="train")[0], config, 0, reward_for("verifier")).parts[0].score()
    grpo._loop_eval(um, config, show_progress=False)
    assert seen == [("generate_images", 0.0), ("image_token_logprobs", 0.0), ("run_loop", 0.0)]


def test_batch_scaling_divides_by_the_std_of_every_group_of_the_step() -> None:
    """TRL's `scale_rewards="batch"`: each group's advantages stay centred on its own mean, and all are divided by
    the std of the step's rewards of their kind, over every group."""
    trainer = GRPOTrainer(load_model("tiny"), GRPOConfig(**(TINY_RUN | {"prompts_per_step": 2,
                                                                          "scale_rewards": "batch"})), "unused")
    trainer._roll_out()
    parts = [rollout.parts[0] for _, rollout, _ in trainer.rollouts]
    every = torch.tensor([r for part in parts for r in part.rewards])
    for part in parts:
        own = torch.tensor(part.rewards)
        assert torch.allclose(part.advantage, (own - own.mean()) / (every.std() + 1e-4))
    assert advantages([1.0, 0.0, 0.5], "batch").tolist() == pytest.approx([0.5, -0.5, 0.0])  # centred only, here


def test_loss_types_aggregate_as_trl_does() -> None:
    """TRL's GRPOTrainer formulas (trl/trainer/grpo_trainer.py): bnpo over the batch's trained tokens, grpo per
    completion then over completions, dr_grpo over B × max_completion_length; zero outside the mask."""
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = per_token != 0
    assert text_loss(per_token, mask).item() == pytest.approx(10 / 4)
    assert text_loss(per_token, mask, "bnpo").item() == pytest.approx(10 / 4)
    assert text_loss(per_token, mask, "grpo").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert text_loss(per_token, mask, "dr_grpo", max_completion_length=8).item() == pytest.approx(10 / (2 * 8))
    with pytest.raises(ValueError, match="loss_type must be one of bnpo, grpo, dr_grpo"):
        text_loss(per_token, mask, "dapo")


def _kill_at_step_3(trainer: GRPOTrainer) -> None:
    """Train until the third step, which dies (after the checkpoint at step 2)."""
    step = trainer._train_step

    def killed_at_step_3() -> dict:
        if trainer.step == 3:
            raise KeyboardInterrupt
        return step()

    trainer._train_step = killed_at_step_3  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.train(show_progress=False)


def test_updates_reuse_a_rollout_for_num_iterations_steps_and_resume_exactly(tmp_path, monkeypatch) -> None:
    """`num_iterations` 2: steps 0 and 1 update on one rollout (sampled once; the second update's ratio is to the
    policy that sampled it), the stages alternate rollout by rollout, and a run killed after a checkpoint resumes to
    the same weights."""
    config = GRPOConfig(**(TINY_RUN | {"num_iterations": 2, "warmup_steps": 0, "beta": 0.0}))
    calls = []
    original = UnifiedModel.generate_images
    monkeypatch.setattr(UnifiedModel, "generate_images",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    GRPOTrainer(load_model("tiny"), config, tmp_path / "whole").train(show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["generate", "generate", "refine", "refine"]
    assert len(calls) == config.prompts_per_step  # one generation rollout (refining edits its buffered images)
    assert "generate/reward" in rows[0] and "generate/reward" not in rows[1]  # rewards where the rollout was made
    # β = 0 and centred advantages: at a rollout's first update the ratio is 1 and the loss 0; at the second the ratio
    # is to the policy that sampled it, which one step has moved (re-detaching every update would give 0 again)
    assert abs(rows[0]["loss"]) < 1e-6 < abs(rows[1]["loss"])
    monkeypatch.undo()

    _kill_at_step_3(GRPOTrainer(load_model("tiny"), config, tmp_path / "cut"))
    GRPOTrainer(load_model("tiny"), config, tmp_path / "cut").train(resume=True, show_progress=False)
    whole, resumed = _adapter(tmp_path / "whole"), _adapter(tmp_path / "cut")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(UserError, match=r"checkpoint-every \(25\) must be a multiple of num-iterations \(2\)"):
        GRPOConfig(num_iterations=2)
    with pytest.raises(UserError, match="epsilon-high must be positive"):
        GRPOConfig(epsilon_high=0.0)
    with pytest.raises(UserError, match="loss-type must be one of bnpo, grpo, dr_grpo, got 'dapo'"):
        GRPOConfig(loss_type="dapo")
    with pytest.raises(UserError, match="advantage is a reward minus its group's mean"):
        GRPOConfig(num_generations=1)
    with pytest.raises(UserError, match="scale-rewards"):
        GRPOConfig(scale_rewards="global")
    with pytest.raises(UserError, match="greedy"):
        GRPOConfig(temperature=0)
    with pytest.raises(UserError, match="stages must be one of tree, generate"):
        GRPOConfig(stages="refine")
    with pytest.raises(UserError, match=r"reward: unknown judge 'clipscore'; expected one of verifier, self-pyes, base-pyes, clip:DIR, "
                                          r"vlm:DIR, or verifier-binary$"):
        GRPOConfig(reward="clipscore")
    assert GRPOConfig(reward="verifier-binary").reward == "verifier-binary"
    assert GRPOConfig(perfect_fraction=1.0).perfect_fraction == 1.0  # (always a perfect start where there is one)
    with pytest.raises(UserError, match=r"perfect-fraction must lie in \[0, 1\], got 1.5"):
        GRPOConfig(perfect_fraction=1.5)
    with pytest.raises(UserError, match=r"adam-beta2 must lie in \[0, 1\), got 1.0"):
        GRPOConfig(adam_beta2=1.0)
    with pytest.raises(UserError, match="lora-dropout must be 0 in refine train, got 0.05: the policy runs in eval"):
        GRPOConfig(lora_dropout=0.05)  # (it was recorded as used while training ran without it)


def test_generation_stage_alone_self_rewarded_logs_the_verifier_as_its_audit(tmp_path) -> None:
    config = GRPOConfig(**(TINY_RUN | {"steps": 2}), stages="generate", reward="self-pyes", beta=0.0)
    GRPOTrainer(load_model("tiny"), config, tmp_path / "g").train(show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "g" / "log.jsonl").read_text().splitlines()]
    keys = set(logged_keys("self-pyes"))  # the reward's column is named after it, as TRL names reward functions
    assert [r["stage"] for r in rows] == ["generate", "generate"] and all(set(r) <= keys for r in rows)
    assert all("generate/rewards/self-pyes/std" in r and "kl" not in r for r in rows)  # no KL term: no kl column
    assert all(0 <= r["generate/audit/verifier_accuracy"] <= 1 for r in rows)
    assert all(r["generate/reward"] not in (0.0, 1.0) for r in rows)  # P(yes), not a verdict
    state = torch.load(tmp_path / "g" / "checkpoint" / "checkpoint.pt", weights_only=False)
    assert state["buffer"] == []  # nothing draws from it


def _adapter(out: Path) -> dict:
    return load_file(out / "adapter_model.safetensors")


def test_stages_alternate_the_buffer_is_checkpointed_and_a_killed_run_resumes_exactly(tmp_path, monkeypatch) -> None:
    config, done = GRPOConfig(**TINY_RUN), []
    GRPOTrainer(load_model("tiny"), config, tmp_path / "whole").train(show_progress=False,
                                                                      on_step=lambda step, row: done.append(step))
    assert done == [1, 2, 3, 4]  # (the study's bar: its GRPO ran 23 minutes a seed in silence)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["generate", "refine", "generate", "refine"]
    assert all(set(r) <= set(LOGGED_KEYS) for r in rows) and "generate/reward" in rows[0]
    assert all("kl" in r and r["entropy"] > 0 for r in rows) and "generate/rewards/image_score/mean" in rows[0]
    assert "completions/clipped_ratio" in rows[1] and "completions/clipped_ratio" not in rows[0]  # reflections only
    assert "refine/stop_rate" in rows[1] and "generate/audit/verifier_accuracy" not in rows[0]  # the reward is it
    state = torch.load(tmp_path / "whole" / "checkpoint" / "checkpoint.pt", weights_only=False)
    # R3's buffer: the latest generation step's images (step 2's), none of step 0's and no edit
    assert len(state["buffer"]) == config.prompts_per_step * config.num_generations

    _kill_at_step_3(GRPOTrainer(load_model("tiny"), config, tmp_path / "cut"))
    with pytest.raises(UserError, match="different settings"):
        GRPOTrainer(load_model("tiny"), GRPOConfig(**(TINY_RUN | {"beta": 0.1})), tmp_path / "cut").train(
            resume=True, show_progress=False)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint")
    old = {**saved, "config": {k: v for k, v in saved["config"].items() if not k.startswith("edit_")}}
    save_checkpoint(tmp_path / "cut" / "checkpoint", old)  # as written before the edit scales existed
    with pytest.raises(UserError, match=r"edit_cfg_scale: \(absent\) → 2.0"):  # its edits were guided otherwise
        GRPOTrainer(load_model("tiny"), config, tmp_path / "cut").train(resume=True, show_progress=False)
    shutil.copytree(tmp_path / "cut", tmp_path / "regenerates")
    monkeypatch.setattr(UnifiedModel, "supports_editing", property(lambda self: False))
    GRPOTrainer(load_model("tiny"), config, tmp_path / "regenerates").train(resume=True, show_progress=False)
    monkeypatch.undo()  # a model that only regenerates never edited: the scales changed none of its numbers
    save_checkpoint(tmp_path / "cut" / "checkpoint", saved)
    GRPOTrainer(load_model("tiny"), config, tmp_path / "cut").train(resume=True, show_progress=False)
    whole, resumed = _adapter(tmp_path / "whole"), _adapter(tmp_path / "cut")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_every_process_looks_at_out_before_the_main_one_writes(tmp_path, monkeypatch) -> None:
    """Under `accelerate launch` a slower process that checked OUT after the main one wrote settings.json took the
    fresh run for an old one and stopped ("already holds a refine train run")."""
    written_at_barrier = []

    class Barrier(Exception):
        pass

    def barrier() -> None:
        written_at_barrier.append(sorted(p.name for p in tmp_path.iterdir()))
        raise Barrier

    monkeypatch.setattr(distributed, "wait_for_everyone", barrier)
    with pytest.raises(Barrier):
        train_grpo(load_model("tiny"), GRPOConfig(**TINY_RUN), tmp_path / "run", show_progress=False)
    assert written_at_barrier == [[]]  # every check before the barrier, every write after it


def test_a_run_is_not_resumed_on_another_model(tmp_path, monkeypatch) -> None:
    """From Python no checkpoint path tells two models apart: the settings record the model's fingerprint."""
    import unigap.refine.grpo as grpo

    class Claimed(Exception):
        pass

    monkeypatch.setattr(grpo, "GRPOTrainer", lambda *args, **kwargs: (_ for _ in ()).throw(Claimed()))
    um, config = load_model("tiny"), GRPOConfig(**TINY_RUN)
    settings = {k: v for k, v in config.to_dict().items() if k not in grpo.FREE_SETTINGS}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / grpo.SETTINGS_FILE).write_text(json.dumps(settings | {"model": "another model",
                                                                               "model_dtype": "float32"}))
    with pytest.raises(UserError, match=rf'other settings \(model: "another model" → "{um.fingerprint()}"\)'):
        train_grpo(um, config, tmp_path / "run", resume=True, show_progress=False)
    (tmp_path / "run" / grpo.SETTINGS_FILE).write_text(json.dumps(settings))  # recorded before models were
    with pytest.raises(Claimed):
        train_grpo(um, config, tmp_path / "run", resume=True, show_progress=False)


def test_cli_trains_and_compares_the_loop_before_and_after(tmp_path, capsys, monkeypatch) -> None:
    import unigap.refine.grpo as grpo

    splits = []
    draw = grpo.held_out_pairs
    monkeypatch.setattr(grpo, "held_out_pairs", lambda *args, **kw: splits.append(kw.get("split")) or draw(*args, **kw))
    config = tmp_path / "g.toml"
    config.write_text("steps = 2\nprompts_per_step = 1\nnum_generations = 2\neval_n = 3\neval_rounds = 1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--config", str(config), "--split", "val", "--out", str(tmp_path / "g")])
    assert exit_info.value.code in (0, None)
    report = json.loads((tmp_path / "g" / "grpo.json").read_text())
    assert report["config"]["eval_split"] == "val" and splits == ["val", "val"]  # the loop before and after
    assert [r["round"] for r in report["before"]["rounds"]] == [0, 1] == [r["round"] for r in report["after"]["rounds"]]
    assert report["change"]["n"] == 3 and (tmp_path / "g" / "adapter_model.safetensors").is_file()
    adapter = json.loads((tmp_path / "g" / "adapter_config.json").read_text())  # what grpo.json says trained did
    assert "generation head" in report["trained_parameters"] and adapter["modules_to_save"] == ["generation_head"]
    (tmp_path / "g" / "checkpoint" / "checkpoint.pt").unlink()  # as if killed after the loop before training
    config.write_text(config.read_text().replace("eval_n = 3", "eval_n = 4"))
    with pytest.raises(SystemExit) as exit_info:  # the loop before training ran on 3 prompts: not reused for 4
        main(["refine", "train", "--config", str(config), "--split", "val", "--out", str(tmp_path / "g"), "--resume"])
    assert exit_info.value.code == 2 and "eval_n: 3 → 4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # without --resume: a new run, not this one's parts
        main(["refine", "train", "--config", str(config), "--split", "val", "--out", str(tmp_path / "g")])
    assert exit_info.value.code == 2 and "already holds a refine train run" in capsys.readouterr().err
    config.write_text(config.read_text().replace("eval_n = 4", "eval_n = 3"))
    with pytest.raises(SystemExit) as exit_info:  # spans change only rounding: a run resumes under another size
        main(["refine", "train", "--config", str(config), "--split", "val", "--out", str(tmp_path / "g"), "--resume",
              "--micro-batch-size", "1"])
    assert exit_info.value.code in (0, None)
    assert json.loads((tmp_path / "g" / "grpo.json").read_text())["config"]["micro_batch_size"] == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--micro-batch-size", "0", "--out", str(tmp_path / "h")])
    assert exit_info.value.code == 2 and "micro-batch-size must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--num-generations", "1", "--out", str(tmp_path / "h")])
    assert exit_info.value.code == 2 and "num-generations must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--loss-type", "dapo", "--out", str(tmp_path / "h")])
    assert exit_info.value.code == 2 and "loss-type must be one of bnpo, grpo, dr_grpo" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--reward", "clip", "--out", str(tmp_path / "i")])
    assert exit_info.value.code == 2 and "reward: unknown judge 'clip'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", "train", "--reward", f"clip:{tmp_path / 'none'}", "--out", str(tmp_path / "i")])
    assert exit_info.value.code == 2 and "clip judge directory" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_audit_guard_stops_only_on_a_significant_fall_at_a_window_boundary() -> None:
    steady = [(0.3, 0.4), (0.2, 0.4), (0.25, 0.4)]
    falling = [(0.05, 0.6), (0.0, 0.6), (0.02, 0.7)]
    assert audit_guard(steady, 3) is None  # one window: nothing to compare
    assert audit_guard(steady + falling[:2], 3) is None  # checked when a window completes
    verdict = audit_guard(steady + falling, 3)
    assert verdict["p"] < 0.01 and verdict["generation_steps"] == 6
    assert verdict["verifier_accuracy"] == pytest.approx([0.25, 0.07 / 3]) and verdict["reward"][1] > 0.6
    assert audit_guard(steady + steady[::-1], 3) is None  # no fall
    assert audit_guard(falling + steady, 3) is None  # a rise never stops
    assert audit_guard([(0.2, 0.4)] * 6, 3) is None  # no spread: the test is undefined, the run goes on
    assert audit_guard([(0.25, 0.4)] * 3 + [(0.5, 0.4)] * 3, 3) is None  # nor does a rise without spread
    assert audit_guard([(0.5, 0.4)] * 3 + [(0.25, 0.6)] * 3, 3)["p"] == 0.0  # but a fall without spread is certain
    # the first window at which it would have stopped, even when a later window no longer would
    assert audit_guard(steady + falling + steady, 3) is None
    assert first_alarm(steady + falling + steady, 3) == verdict
    assert first_alarm(steady + steady + falling[:2], 3) is None


def test_a_self_rewarded_run_whose_audit_falls_is_stopped_and_resumes_without_the_guard(tmp_path, capsys,
                                                                                        monkeypatch) -> None:
    import unigap.evaluate.judges as judges

    # the verifier's verdicts, 3 images a step: passed in the first window of 3 generation steps, failed after
    verdicts = iter([1, 1, 1, 1, 1, 0, 1, 1, 1] + [0, 0, 0, 0, 0, 1, 0, 0, 0] * 3)
    monkeypatch.setattr(judges, "verify", lambda *args, **kw: SimpleNamespace(satisfied=bool(next(verdicts))))
    config = tmp_path / "g.toml"
    config.write_text("steps = 9\nprompts_per_step = 1\nnum_generations = 3\neval_n = 0\ncheckpoint_every = 2\n"
                      "stages = 'generate'\nreward = 'self-pyes'\naudit_window = 3\n")
    args = ["refine", "train", "--config", str(config), "--out", str(tmp_path / "g")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert exit_info.value.code == 3 and err.startswith("unigap: guard: the verifier passed 0.889 of the training")
    assert "stopped after 6 steps; the last checkpoint (step 6) is kept" in err
    assert "(--resume --no-guard continues from it" in err
    report = json.loads((tmp_path / "g" / "grpo.json").read_text())
    assert report["guard"]["stopped"] and report["guard"]["step"] == 6 and report["after"] is None
    assert report["guard"]["active"] and "Welch" in report["guard"]["rule"]
    assert report["guard"]["alarm"]["generation_steps"] == 6 and report["guard"]["alarm"]["p"] == report["guard"]["p"]
    assert not (tmp_path / "g" / "adapter_model.safetensors").exists()  # no adapter from a stopped run
    stop = report["guard"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume"])  # the checkpoint holds the failing window: the guard stops it again at once
    assert exit_info.value.code == 3 and "stopped after 6 steps" in capsys.readouterr().err
    assert not (tmp_path / "g" / "adapter_model.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume", "--no-guard"])  # the guard is a switch: the run resumes under it
    assert exit_info.value.code in (0, None)
    rows = [json.loads(line) for line in (tmp_path / "g" / "log.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "g" / "grpo.json").read_text())
    assert [r["step"] for r in rows] == list(range(9)) and report["guard"] == {
        "stopped": False, "active": False, "rule": report["guard"]["rule"], "alarm": stop["alarm"]}
    assert (tmp_path / "g" / "adapter_model.safetensors").is_file()
    finished = (tmp_path / "g" / "grpo.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume"])  # the finished run, resumed with the guard on: it alarms, and keeps the result
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 3 and "keeps the result of the finished run, trained past this alarm" in err
    assert (tmp_path / "g" / "grpo.json").read_text() == finished  # (was replaced by a "stopped" record)


def test_a_group_whose_rewards_are_equal_to_within_rounding_counts_as_zero_std() -> None:
    """Three text rewards of 1 − 2/3 each differ in their last bits; TRL's `frac_reward_zero_std` (isclose) counts
    the group, as an exact comparison did not."""
    from unigap.refine.grpo_loss import refine_rewards
    from unigap.refine.rollout import _group_stats

    _, text, _ = refine_rewards([2 / 3] * 3, [0.0] * 3, [False] * 3, [True] * 3, [False] * 3)
    stats = _group_stats(text)
    assert 0 < stats["reward_std"] < 1e-15 and stats["frac_reward_zero_std"] == 1.0
    assert _group_stats([0.0, 1.0, 0.5])["frac_reward_zero_std"] == 0.0


def _span_scorer(logits: torch.Tensor, tokens: torch.Tensor, lengths: list[int]):
    """A reflection scorer shaped like `answer_token_logprobs`: the rows asked for, right-aligned in the width of
    their longest answer."""
    from unigap.model.decoding import token_logprobs

    full = logits.shape[1]

    def score(rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(lengths[rows])
        mask = torch.tensor([[col >= width - n for col in range(width)] for n in lengths[rows]])
        return torch.where(mask, token_logprobs(logits[rows, full - width:], tokens[rows, full - width:]), 0.0), mask

    return score


@pytest.mark.parametrize("loss_type", ["bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("masked", [False, True])
def test_a_group_scored_in_micro_batches_gets_the_gradient_and_metrics_of_the_whole(loss_type: str,
                                                                                    masked: bool) -> None:
    """`micro_batch_size` scores and back-propagates a group's rows a span at a time, each with its share of the
    whole group's loss (the group's completions and trained tokens in the denominators): the gradient, the loss and
    the logged metrics are the whole group's, for every loss type, with truncated reflections masked or not, with a
    KL to a reference, and at a later update reusing the rollout's log-probs."""
    from unigap.model.decoding import token_logprobs
    from unigap.refine.rollout import Part, Rollout, rollout_loss, spans

    generator = torch.Generator().manual_seed(0)
    lengths = [4, 1, 3, 2, 4]
    tokens = torch.randint(0, 6, (5, 4), generator=generator)
    base_text, base_image = torch.randn(5, 4, 6, generator=generator), torch.randn(3, 7, 6, generator=generator)
    image_tokens = torch.randint(0, 6, (3, 7), generator=generator)

    def run(micro: int | None) -> tuple[float, torch.Tensor, torch.Tensor, dict[str, float]]:
        config = GRPOConfig(beta=0.1, loss_type=loss_type, max_completion_length=4, mask_truncated_completions=masked,
                            micro_batch_size=micro, num_iterations=2, checkpoint_every=2)
        text_logits, image_logits = base_text.clone().requires_grad_(True), base_image.clone().requires_grad_(True)
        text_score = _span_scorer(text_logits, tokens, lengths)
        image_score = lambda rows=slice(None): (token_logprobs(image_logits[rows], image_tokens[rows]),  # noqa: E731
                                                torch.ones(len(image_tokens[rows]), 7, dtype=torch.bool))
        with torch.no_grad():  # a reference a little off the policy, span by span as `_part` computes it
            text_ref = tuple(text_score(s)[0] - 0.05 for s in spans(5, micro))
            image_ref = tuple(image_score(s)[0] + 0.05 for s in spans(3, micro))
        text = Part("text", text_score, torch.tensor([1.0, -0.5, 0.25, -1.0, 0.25]), text_ref,
                    truncated=(True, False, False, True, False), lengths=tuple(lengths))
        image = Part("image", image_score, torch.tensor([0.5, -1.0, 0.5]), image_ref, share=0.6)
        rollout = Rollout((text, image), [], {})
        _, old, _ = rollout_loss(rollout, config, divisor=2)
        with torch.no_grad():  # the policy moves before the rollout's second update: ratios leave 1, some clip
            text_logits += 0.8 * torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(1))
            image_logits += 0.8 * torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(2))
        text_logits.grad = image_logits.grad = None
        loss, _, metrics = rollout_loss(rollout, config, old, divisor=2)
        return loss, text_logits.grad, image_logits.grad, metrics

    loss, text_grad, image_grad, metrics = run(None)
    assert metrics["clip_ratio/region_mean"] > 0 and metrics["kl"] > 0  # the comparison covers clipping and the KL
    for micro in (1, 2):
        span_loss, span_text_grad, span_image_grad, span_metrics = run(micro)
        assert span_loss == pytest.approx(loss, rel=1e-5)
        assert torch.allclose(span_text_grad, text_grad, atol=1e-7) and torch.allclose(span_image_grad, image_grad,
                                                                                        atol=1e-7)
        assert span_metrics == pytest.approx(metrics, rel=1e-5)
    assert (text_grad[[0, 3]].abs().sum() == 0) == masked  # (the truncated reflections: masked, they train nothing)


def test_micro_batches_of_a_real_rollout_train_the_same() -> None:
    """On the shipped model's rollouts of both stages (images; reflections and edits), `micro_batch_size` 1 gives the
    whole group's gradient on every trained parameter (what it saves in memory: `benchmarks/grpo_memory.py`)."""
    from unigap.refine.rollout import rollout_loss

    def step(micro: int | None) -> list[list[torch.Tensor]]:
        trainer = GRPOTrainer(load_model("tiny"), GRPOConfig(**(TINY_RUN | {"beta": 0.01, "micro_batch_size": micro})),
                              "unused")
        grads = []
        for index in (0, 1):  # a generation step, then a refine step from its images
            trainer.step = index
            trainer._roll_out()
            assert trainer.stage == ("generate", "refine")[index]
            for _, p in trainer.named:
                p.grad = None
            for _, rollout, _ in trainer.rollouts:
                rollout_loss(rollout, trainer.config, divisor=1)
            grads.append([p.grad.clone() for _, p in trainer.named])
        return grads

    for whole, span in zip(step(None), step(1), strict=True):
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(whole, span, strict=True))
        assert any(a.abs().sum() > 0 for a in whole)
