"""Strategy combinations against hand math: PCGrad, static weights, torchjd aggregators."""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, DualProj, UPGrad

from unigap.errors import UserError
from unigap.train.names import STRATEGIES, TORCHJD
from unigap.train.strategies import GradWeighted, PCGrad, Strategy, build_strategy, length_norm_weight


def make(name: str, length_w_und: float = 0.0) -> Strategy:
    return build_strategy(
        name, joint_alpha=0.5, fixed_w_und=0.93, reweight_every=50, length_w_und=lambda: length_w_und
    )


G_UND = torch.tensor([3.0, 1.0, -2.0])
G_GEN = torch.tensor([1.0, 2.0, 0.5])  # dot = 4 > 0


def test_pcgrad_equals_the_joint_sum_without_conflict() -> None:
    """cos >= 0: PCGrad is the plain gradient of L_U + L_G, i.e. joint (α = 0.5) up to its factor 2."""
    combo = PCGrad().combine(G_UND, G_GEN, step=0)
    joint = Strategy(0.5).combine(G_UND, G_GEN, step=0)
    assert torch.equal(combo.shared, G_UND + G_GEN)
    assert torch.allclose(combo.shared, 2 * joint.shared)
    orthogonal = PCGrad().combine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), step=0)
    assert orthogonal.shared.tolist() == [1.0, 2.0]


def test_pcgrad_projects_conflicting_gradients() -> None:
    """g_U = (1, 0), g_G = (-1, 1): g_U' = g_U + ½g_G = (½, ½), g_G' = g_G + g_U = (0, 1); sum (½, 3/2)."""
    combo = PCGrad().combine(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), step=0)
    assert combo.shared.tolist() == pytest.approx([0.5, 1.5])
    assert (combo.specific_und, combo.specific_gen) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("name", "w_und"), [("und-only", 1.0), ("gen-only", 0.0), ("joint", 0.5), ("fixed", 0.93)]
)
def test_static_weights(name: str, w_und: float) -> None:
    strategy = make(name)
    combo = strategy.combine(G_UND, G_GEN, step=7)
    assert combo.w_und == pytest.approx(w_und) and combo.w_gen == pytest.approx(1 - w_und)
    assert torch.allclose(combo.shared, w_und * G_UND + (1 - w_und) * G_GEN)
    assert (combo.specific_und, combo.specific_gen) == (combo.w_und, combo.w_gen)


def test_length_norm_weight() -> None:
    assert length_norm_weight(576, 50) == pytest.approx(576 / 626)
    assert make("length-norm", length_norm_weight(64, 6)).weights == pytest.approx((64 / 70, 6 / 70))


def test_grad_weighted_refreshes_every_k_steps() -> None:
    strategy = GradWeighted(every=3)
    small, large = torch.tensor([0.0, 1.0]), torch.tensor([3.0, 0.0])
    weights = [strategy.combine(small * (s + 1), large, step=s).w_und for s in range(7)]
    at3, at6 = 3 / (4 + 3), 3 / (7 + 3)  # ‖g_G‖ / (‖g_U‖ + ‖g_G‖) with ‖g_U‖ = step + 1
    assert weights == pytest.approx([0.5, 0.5, 0.5, at3, at3, at3, at6])


TORCHJD_AGGREGATORS = {"upgrad": UPGrad, "mgda": MGDA, "dualproj": DualProj, "imtl-g": IMTLG,
                       "aligned-mtl": AlignedMTL}


def test_every_torchjd_strategy_is_checked_against_its_aggregator() -> None:
    assert set(TORCHJD_AGGREGATORS) == set(TORCHJD)  # (a strategy added there is added here, with its class)


@pytest.mark.parametrize(("name", "aggregator"), TORCHJD_AGGREGATORS.items())
def test_torchjd_strategies_match_the_aggregator(name: str, aggregator: type) -> None:
    strategy = make(name)
    g_gen = torch.tensor([-2.0, 1.0, 0.5])  # conflicting with G_UND
    combo = strategy.combine(G_UND, g_gen, step=0)
    assert torch.allclose(combo.shared, aggregator()(torch.stack([G_UND, g_gen])), atol=1e-6)
    assert torch.allclose(combo.w_und * G_UND + combo.w_gen * g_gen, combo.shared, atol=1e-6)


def test_unknown_strategy_is_a_user_error_naming_the_closest() -> None:
    closest = "unknown strategy 'pcgard' \\(did you mean 'pcgrad'\\?\\); expected one of und-only, gen-only"
    with pytest.raises(UserError, match=closest):
        make("pcgard")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_builds_and_combines(name: str) -> None:
    combo = make(name, length_w_und=0.8).combine(G_UND, G_GEN, step=0)
    assert combo.shared.shape == G_UND.shape and torch.isfinite(combo.shared).all()
