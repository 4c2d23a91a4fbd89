"""Gradient machinery on constructed losses whose gradients are known exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from unigap.diagnose import GradientCollector, ParameterSet, analyse, collect, task_gradient
from unigap.diagnose.gradients import draw_order

# Two "layers", each with a lora_A (attention) and a lora_B (mlp) tensor: 4 tensors, 10 numbers.
NAMES = (
    "model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight",
    "model.language_model.layers.0.mlp.up_proj.lora_B.default.weight",
    "model.language_model.layers.1.self_attn.v_proj.lora_A.default.weight",
    "model.language_model.layers.1.mlp.down_proj.lora_B.default.weight",
)
SHAPES = ((2, 1), (3,), (2,), (3,))
SIZE = sum(math.prod(s) for s in SHAPES)
B_MASK = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 1, 1], dtype=torch.bool)  # where the lora_B numbers lie


def _params() -> ParameterSet:
    return ParameterSet.from_named([(n, nn.Parameter(torch.randn(s))) for n, s in zip(NAMES, SHAPES, strict=True)])


def _flat(params: ParameterSet) -> torch.Tensor:
    return torch.cat([p.flatten() for p in params.parameters])


def _linear(params: ParameterSet):
    """L(θ) = ⟨v, θ⟩: the gradient is v, whatever θ."""
    return lambda _um, v: (torch.as_tensor(v, dtype=torch.float32) * _flat(params)).sum()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _vectors(rng: np.random.Generator, n: int, zero_a: bool = False) -> list[np.ndarray]:
    out = rng.normal(size=(n, SIZE))
    if zero_a:
        out[:, ~B_MASK.numpy()] = 0.0
    return list(out)


def test_a_batch_that_overflowed_is_counted_and_left_out_not_written_as_nan() -> None:
    """One bf16 overflow among the batches: the report is still JSON (it refuses NaN), the batch counted."""
    rng = np.random.default_rng(0)
    und, gen = _vectors(rng, 6), _vectors(rng, 6)
    und[2] = und[2].copy()
    und[2][0] = np.inf
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    for i in range(6):
        collector.add(und[i], gen[i], i, i)
    report = analyse(collector.log, [1.0] * 6, [1.0] * 6)
    json.dumps(report, allow_nan=False)
    assert report["inter"]["cos_undefined"] == 1 and report["inter"]["cos_n"] == 5
    assert report["inter"]["ratio_n"] == 5 and report["inter"]["und_norm_nonfinite"] == 1
    cos = [_cos(u, g) for i, (u, g) in enumerate(zip(und, gen, strict=True)) if i != 2]
    assert report["inter"]["cos_mean"] == pytest.approx(np.mean(cos), rel=1e-6)
    assert report["samples"]["und_norm"][2] is None


def test_cosine_ratio_and_intra_are_exact_for_known_gradients() -> None:
    rng = np.random.default_rng(0)
    und, gen = _vectors(rng, 6), [3.0 * v for v in _vectors(rng, 6)]
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    for i in range(6):
        collector.add(und[i], gen[i], i, i)
    report = analyse(collector.log, [2.0] * 6, [64.0] * 6)

    cos = [_cos(u, g) for u, g in zip(und, gen, strict=True)]
    rho = [np.linalg.norm(u) / np.linalg.norm(g) for u, g in zip(und, gen, strict=True)]
    np.testing.assert_allclose(report["samples"]["inter_cos"], cos, rtol=1e-6)
    np.testing.assert_allclose(report["samples"]["ratio"], rho, rtol=1e-6)
    assert report["inter"]["cos_mean"] == pytest.approx(np.mean(cos), rel=1e-6)
    assert report["inter"]["ratio_mean"] == pytest.approx(np.mean(rho), rel=1e-6)
    assert report["inter"]["ratio_cv"] == pytest.approx(np.std(rho, ddof=1) / np.mean(rho), rel=1e-6)
    intra_und = [_cos(und[k], und[k + 1]) for k in (0, 2, 4)]  # couples (0,1), (2,3), (4,5)
    intra_gen = [_cos(gen[k], gen[k + 1]) for k in (0, 2, 4)]
    np.testing.assert_allclose(report["samples"]["intra_und_cos"], intra_und, rtol=1e-6)
    np.testing.assert_allclose(report["samples"]["intra_gen_cos"], intra_gen, rtol=1e-6)
    assert report["intra"]["und_cos_n"] == report["intra"]["gen_cos_n"] == 3
    # grad-weighted w_U = ‖g_G‖/(‖g_U‖+‖g_G‖) = 1/(1+ρ); length-normalised N/(N+T)
    w = [1 / (1 + r) for r in rho]
    assert report["weighting"]["grad_weighted_w_und_mean"] == pytest.approx(np.mean(w), rel=1e-6)
    assert report["weighting"]["length_normalised_w_und"] == pytest.approx(64 / 66)


def test_groups_restrict_the_vectors_exactly() -> None:
    rng = np.random.default_rng(1)
    und, gen = _vectors(rng, 4), _vectors(rng, 4)
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    for i in range(4):
        collector.add(und[i], gen[i], i, i)
    report = analyse(collector.log, [1.0] * 4, [1.0] * 4)
    layer_of = np.repeat([0, 0, 1, 1], [math.prod(s) for s in SHAPES])
    b = B_MASK.numpy()
    assert [row["layer"] for row in report["per_layer"]] == [0, 1]
    for row in report["per_layer"]:
        mask = layer_of == row["layer"]
        expected = np.mean([_cos(u[mask], g[mask]) for u, g in zip(und, gen, strict=True)])
        assert row["cos_mean"] == pytest.approx(expected, rel=1e-6)
        expected_b = np.mean([_cos(u[mask & b], g[mask & b]) for u, g in zip(und, gen, strict=True)])
        assert row["factors"]["lora_B"]["cos_mean"] == pytest.approx(expected_b, rel=1e-6)
        assert row["modules"]["mlp"]["cos_mean"] == pytest.approx(expected_b, rel=1e-6)  # lora_B tensors = mlp here
    norms = [np.linalg.norm(u[~b]) for u in und]
    assert report["per_module"]["factors"]["lora_A"]["und_norm_mean"] == pytest.approx(np.mean(norms), rel=1e-6)


def test_zero_lora_a_gradient_is_reported_not_nan() -> None:
    rng = np.random.default_rng(2)
    und, gen = _vectors(rng, 4, zero_a=True), _vectors(rng, 4, zero_a=True)
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    for i in range(4):
        collector.add(und[i], gen[i], i, i)
    report = analyse(collector.log, [1.0] * 4, [1.0] * 4)
    assert report["per_module"]["factors"]["lora_A"] == {"zero_gradient": True}
    assert report["per_module"]["modules"]["attention"] == {"zero_gradient": True}
    assert all(row["factors"]["lora_A"] == {"zero_gradient": True} for row in report["per_layer"])
    assert report["per_module"]["factors"]["lora_B"]["zero_gradient"] is False
    # the global numbers are those of lora_B alone
    assert report["inter"]["cos_mean"] == pytest.approx(report["per_module"]["factors"]["lora_B"]["cos_mean"])
    json.dumps(report, allow_nan=False)  # raises on any NaN/inf


def test_one_sided_zero_gradient_counts_undefined_cosines() -> None:
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    zero, ones = np.zeros(SIZE), np.ones(SIZE)
    collector.add(zero, ones, 0, 0)
    collector.add(ones, ones, 1, 1)
    report = analyse(collector.log, [1.0] * 2, [1.0] * 2)
    assert report["inter"]["cos_undefined"] == 1 and report["inter"]["cos_n"] == 1
    assert report["intra"]["und_cos_undefined"] == 1 and report["intra"]["und_cos_n"] == 0
    assert report["intra"]["und_cos_mean"] is None
    json.dumps(report, allow_nan=False)


def test_half_rho_squared_when_gradients_are_orthogonal() -> None:
    rho = 0.1
    params = _params()
    collector = GradientCollector(None, params, _linear(params), _linear(params))
    for i in range(4):
        u, g = np.zeros(SIZE), np.zeros(SIZE)
        u[i], g[i + 5] = rho * (i + 1), float(i + 1)  # orthogonal, ‖g_U‖/‖g_G‖ = ρ
        collector.add(u, g, i, i)
    report = analyse(collector.log, [1.0] * 4, [1.0] * 4)
    change = report["norm_change"]
    assert report["inter"]["cos_mean"] == 0.0
    assert change["predicted_half_rho2_mean"] == pytest.approx(rho**2 / 2)
    assert change["measured_mean"] == pytest.approx(math.sqrt(1 + rho**2) - 1, rel=1e-6)  # float32 gradients
    assert change["orthogonal_mean"] == pytest.approx(change["measured_mean"], rel=1e-9)
    assert abs(change["measured_mean"] - rho**2 / 2) <= rho**4 / 8


def test_quadratic_loss_gradient_and_sum_rule() -> None:
    """L = ½‖θ − c‖² has gradient θ − c; the joint-gradient norm equals ‖g_U + g_G‖ by linearity."""
    params = _params()
    theta = _flat(params).detach().double().numpy()
    quad = lambda _um, c: 0.5 * ((_flat(params) - torch.as_tensor(c, dtype=torch.float32)) ** 2).sum()  # noqa: E731
    rng = np.random.default_rng(3)
    c_und, c_gen = rng.normal(size=SIZE), rng.normal(size=SIZE)
    grads = task_gradient(quad(None, c_und), params)
    np.testing.assert_allclose(torch.cat([g.flatten() for g in grads]).numpy(), theta - c_und, rtol=1e-5, atol=1e-6)
    collector = GradientCollector(None, params, quad, quad)
    collector.add(c_und, c_gen, 0, 0)
    report = analyse(collector.log, [1.0], [1.0])
    u, g = theta - c_und, theta - c_gen
    expected = np.linalg.norm(u + g) / np.linalg.norm(g) - 1
    assert report["norm_change"]["measured_mean"] == pytest.approx(expected, rel=1e-5)


def test_collect_is_seeded_and_skips_same_pair_couples() -> None:
    params = _params()
    rng = np.random.default_rng(4)
    und, gen = _vectors(rng, 3), _vectors(rng, 2)
    a = collect(None, params, und, gen, _linear(params), _linear(params), n_batches=7, seed=5)
    b = collect(None, params, und, gen, _linear(params), _linear(params), n_batches=7, seed=5)
    assert a.und_index == b.und_index and a.gen_index == b.gen_index
    np.testing.assert_array_equal(a.array("inter"), b.array("inter"))
    couples = [(a.und_index[k], a.und_index[k + 1]) for k in (0, 2, 4)]
    assert len(a.intra_und) == sum(i != j for i, j in couples)
    assert sorted(a.und_index[:3]) == [0, 1, 2]  # a permutation before any repeat
    assert sorted(draw_order(np.random.default_rng(0), 4, 8)[4:]) == [0, 1, 2, 3]


def test_task_gradient_rejects_what_it_cannot_differentiate() -> None:
    params = _params()
    with pytest.raises(ValueError, match="scalar"):
        task_gradient(_flat(params), params)
    with pytest.raises(ValueError, match="does not depend"):
        task_gradient(torch.tensor(1.0), params)
    unused = task_gradient(params.parameters[0].sum(), params)  # other tensors: zeros, not None
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(unused[1:], params.parameters[1:], strict=True))
