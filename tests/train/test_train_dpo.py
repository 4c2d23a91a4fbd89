"""The DPO loss against an independent scalar implementation of the formulas, and one task's loss on a model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_world_fixtures import lora_model, random_pairs

from unigap.train.dpo import TRL_KEYS, DPOOptions, dpo_loss, reference_logprobs, task_dpo_loss

PC = [-10.0, -3.5, -40.0, -7.25]
PR = [-12.0, -2.0, -39.0, -7.25]
RC = [-11.0, -3.0, -41.0, -8.0]
RR = [-11.5, -2.5, -38.0, -6.0]
NC = [5, 2, 20, 3]
NR = [4, 3, 18, 6]


def reference_loss(beta: float, kind: str, per_token: bool, nll: float) -> list[float]:
    """The loss per pair, written from the formulas with Python floats."""
    out = []
    for pc, pr, rc, rr, nc, nr in zip(PC, PR, RC, RR, NC, NR, strict=True):
        rw, rl = pc - rc, pr - rr
        if per_token:
            rw, rl = rw / nc, rl / nr
        h = rw - rl
        loss = math.log(1 + math.exp(-beta * h)) if kind == "sigmoid" else (h - 1 / (2 * beta)) ** 2
        out.append(loss + nll * (-pc / nc))
    return out


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("nll", [0.0, 0.7])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_formula(kind: str, per_token: bool, nll: float, beta: float) -> None:
    def t(xs: list[float]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.float64)

    out = dpo_loss(
        t(PC),
        t(PR),
        t(RC),
        t(RR),
        beta,
        kind,
        chosen_tokens=t(NC),
        rejected_tokens=t(NR),
        length_normalize=per_token,
        nll_weight=nll,
    )
    per_token = per_token or kind == "ipo"  # IPO is always per token, as in TRL
    expected = reference_loss(beta, kind, per_token, nll)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.preference.tolist() == pytest.approx(reference_loss(beta, kind, per_token, 0.0), rel=1e-12)
    assert float(out.loss) == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    margins = [
        beta * ((pc - rc) / (nc if per_token else 1) - (pr - rr) / (nr if per_token else 1))
        for pc, pr, rc, rr, nc, nr in zip(PC, PR, RC, RR, NC, NR, strict=True)
    ]
    assert out.margins.tolist() == pytest.approx(margins, rel=1e-12)
    assert out.accuracies.tolist() == [float(m > 0) for m in margins]
    assert out.kl.tolist() == pytest.approx(
        [((pc - rc) + (pr - rr)) / 2 for pc, pr, rc, rr in zip(PC, PR, RC, RR)]
    )


def test_dpo_loss_gradient_is_the_analytic_one() -> None:
    chosen = torch.tensor([-5.0], requires_grad=True)
    out = dpo_loss(chosen, torch.tensor([-6.0]), torch.tensor([-5.5]), torch.tensor([-5.5]), beta=0.1)
    out.loss.backward()
    h = 0.5 - (-0.5)
    assert float(chosen.grad) == pytest.approx(-0.1 * (1 - 1 / (1 + math.exp(-0.1 * h))))


def test_dpo_loss_rejects_bad_options() -> None:
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="loss type"):
        dpo_loss(x, x, x, x, loss_type="hinge")
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(x, x, x, x, length_normalize=True)


def test_task_loss_starts_at_ln2_with_stored_reference(tiny_dir: Path) -> None:
    """At the reference policy (adapters disabled) every log-ratio is 0: loss ln 2, margin 0, KL 0."""
    um = lora_model(tiny_dir)
    und, gen = random_pairs(um, 2)
    with um.adapters_disabled():
        for pairs in (und, gen):
            result = task_dpo_loss(um, pairs)
            assert result.metrics["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
            assert result.metrics["kl"] == pytest.approx(0, abs=1e-4)
    assert und[0].chosen_tokens > 0 and gen[0].chosen_tokens == um.num_image_tokens


def test_task_loss_is_differentiable_on_shared_lora(tiny_dir: Path) -> None:
    um = lora_model(tiny_dir)
    und, gen = random_pairs(um, 2)
    for pairs in (und, gen):
        um.model.zero_grad()
        result = task_dpo_loss(um, pairs, DPOOptions(length_normalize=True, nll_weight=0.1))
        result.loss.backward()
        grads = [p.grad for p in um.shared_lora_parameters().parameters]
        assert all(g is not None for g in grads) and sum(float(g.norm()) for g in grads) > 0
        assert set(result.metrics) == {"dpo_loss", "reward_margin", "accuracy", "kl", *TRL_KEYS}
    chosen, _, count, _ = reference_logprobs(um, gen)
    assert chosen.shape == (2,) and count.tolist() == [um.num_image_tokens] * 2


def test_task_loss_refuses_mixed_batches(tiny_dir: Path) -> None:
    um = lora_model(tiny_dir)
    und, gen = random_pairs(um, 1)
    with pytest.raises(ValueError, match="one task"):
        task_dpo_loss(um, [und[0], gen[0]])


def test_trls_metrics_are_per_token_where_the_loss_compares_per_token(tiny_dir: Path) -> None:
    """TRL divides the policy's and the reference's log-probs by the completion length for IPO, and logs those:
    its `logps/*` and `rewards/*` are then per token (and here under `length_normalize` too, the loss's own scale)."""
    from unigap.train.dpo import sequence_logprobs

    um = lora_model(tiny_dir)
    und, gen = random_pairs(um, 2)
    for pairs in (und, gen):
        with torch.no_grad():
            chosen, rejected, n_chosen, n_rejected = sequence_logprobs(um, pairs)
        refs = {"chosen": torch.tensor([p.ref_chosen for p in pairs]), "rejected": torch.tensor([p.ref_rejected
                                                                                               for p in pairs])}
        summed = task_dpo_loss(um, pairs, DPOOptions()).metrics
        assert summed["logps/chosen"] == pytest.approx(float(chosen.mean()), rel=1e-4)
        for options in (DPOOptions(loss_type="ipo"), DPOOptions(length_normalize=True)):
            per_token = task_dpo_loss(um, pairs, options).metrics
            for side, policy, counts in (("chosen", chosen, n_chosen), ("rejected", rejected, n_rejected)):
                assert per_token[f"logps/{side}"] == pytest.approx(float((policy / counts).mean()), rel=1e-4)
                assert per_token[f"ref_logps/{side}"] == pytest.approx(float((refs[side] / counts).mean()), rel=1e-4)
            margins = 0.1 * ((chosen - refs["chosen"]) / n_chosen - (rejected - refs["rejected"]) / n_rejected)
            assert per_token["rewards/margins"] == pytest.approx(float(margins.mean()), rel=1e-3, abs=1e-6)


def test_shared_references_are_each_computed_by_one_process_and_match_unshared(tiny_dir: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `accelerate launch` every process recomputed every pair's reference: 8 GPUs did 8 times the work (a
    GPU's bf16 default rescored them all) and went no faster. Shared, a process scores its batches and receives the
    others' numbers (here the "other process" returns what this one computed)."""
    from unigap import distributed
    from unigap.train import dpo

    um = lora_model(tiny_dir)
    und, gen = random_pairs(um, 5)
    alone = dpo.with_reference(um, gen, batch=2)
    scored, real = [], dpo.reference_logprobs

    def counted(um, chunk, cfg_scale):
        scored.append(len(chunk))
        return real(um, chunk, cfg_scale)

    monkeypatch.setattr(dpo, "reference_logprobs", counted)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "gather_objects", lambda value: [value, value])
    shared = dpo.with_reference(um, gen[:4], batch=2, shared=True)
    assert scored == [2]  # (of 2 batches: the other is the other process's)
    assert [p.ref_chosen for p in shared] == pytest.approx([p.ref_chosen for p in alone[:2]] * 2)
    assert [p.prompt for p in shared] == [p.prompt for p in gen[:4]]  # (each process keeps its own pairs)
