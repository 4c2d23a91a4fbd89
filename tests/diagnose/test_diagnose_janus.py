"""Diagnostics on a tiny random Janus with LoRA: grouping, agreement with a direct computation, report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from unigap.diagnose import REPORT, analyse, collect, dpo_loss_fn, run_diagnostics, shared_parameters, write_report
from unigap.diagnose.gradients import full_parameter_set
from unigap.model import UnifiedModel
from unigap.train.dpo import DPOOptions, task_dpo_loss

LAYERS = 4  # tiny_janus_config default
RANK = 4


def test_per_layer_grouping_on_lora(fresh: UnifiedModel, make_pairs) -> None:
    und, gen = make_pairs(fresh, 4)
    params = shared_parameters(fresh, full_params=False, seed=0, rank=RANK, alpha=2 * RANK)
    assert len(params.names) == LAYERS * 7 * 2
    for name, layer, factor, module in zip(params.names, params.layers, params.factors, params.modules, strict=True):
        assert int(re.search(r"layers\.(\d+)\.", name).group(1)) == layer
        assert f".{factor}." in name
        assert module == ("attention" if ".self_attn." in name else "mlp")
    loss_fn = dpo_loss_fn(DPOOptions())
    log = collect(fresh, params, und, gen, loss_fn, loss_fn, n_batches=4, seed=0)
    report = analyse(log, [2.0] * 4, [64.0] * 4)

    assert [row["layer"] for row in report["per_layer"]] == list(range(LAYERS))
    for row in report["per_layer"]:
        assert row["factors"]["lora_A"] == {"zero_gradient": True}  # B = 0 at PEFT's init
        assert row["factors"]["lora_B"]["zero_gradient"] is False
        assert set(row["modules"]) == {"attention", "mlp"}
        assert row["modules"]["attention"]["cos_n"] == 4
    # per-layer squared norms add up to the global one, batch by batch
    inter = log.array("inter")
    layers = np.array(params.layers)
    by_layer = sum(inter[:, layers == k, :].sum(axis=1) for k in range(LAYERS))
    np.testing.assert_allclose(by_layer, inter.sum(axis=1), rtol=1e-12)
    # global cosine of the first batch = the one from flattened autograd gradients
    flat = []
    for pair in (und[log.und_index[0]], gen[log.gen_index[0]]):
        loss = task_dpo_loss(fresh, [pair]).loss
        grads = torch.autograd.grad(loss, params.parameters, allow_unused=True, materialize_grads=True)
        flat.append(torch.cat([g.flatten() for g in grads]))
    expected = torch.nn.functional.cosine_similarity(flat[0].double(), flat[1].double(), dim=0)
    assert report["samples"]["inter_cos"][0] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert report["samples"]["ratio"][0] == pytest.approx(float(flat[0].norm() / flat[1].norm()), rel=1e-5)


def test_full_parameters_cover_the_llm_only(fresh: UnifiedModel, make_pairs) -> None:
    und, gen = make_pairs(fresh, 2)
    params = full_parameter_set(fresh)
    assert all(".language_model." in f".{name}" for name in params.names)
    assert set(params.factors) == {"full"}
    assert {p.requires_grad for n, p in fresh.model.named_parameters() if "language_model" not in n} == {False}
    loss = dpo_loss_fn(DPOOptions())
    report = analyse(collect(fresh, params, und, gen, loss, loss, 2, seed=0), [2.0] * 2, [64.0] * 2)
    assert report["per_module"]["modules"]["other"]["zero_gradient"] is False  # norms and embeddings
    assert report["inter"]["cos_n"] == 2


def test_run_and_report_has_the_required_keys_and_figures(fresh: UnifiedModel, make_pairs, tmp_path) -> None:
    und, gen = make_pairs(fresh, 3)
    params = shared_parameters(fresh, full_params=False, seed=1, rank=RANK, alpha=2 * RANK)
    ticks = []
    report = run_diagnostics(
        fresh, params, und, gen, n_batches=4, seed=1, sweep_probes=2, progress=lambda: ticks.append(1)
    )
    assert len(ticks) == 4 + 2 * 2
    path = write_report(report, tmp_path / "diag")
    data = json.loads(path.read_text())
    assert path.name == REPORT
    for section, key in [
        ("inter", "cos_mean"),
        ("inter", "ratio_mean"),
        ("inter", "cos_ci95"),
        ("inter", "ratio_cv"),
        ("intra", "und_cos_mean"),
        ("intra", "gen_cos_mean"),
        ("intra", "und_cos_std"),
        ("norm_change", "predicted_half_rho2_mean"),
        ("norm_change", "measured_mean"),
        ("weighting", "grad_weighted_w_und_mean"),
    ]:
        assert key in data[section], (section, key)
    assert {"t", "p", "df"} <= set(data["intra"]["welch_und_vs_inter"])
    assert isinstance(data["per_layer"], list) and len(data["per_layer"]) == LAYERS
    assert data["n"] == 4 and data["parameters"]["kind"] == "lora"
    sweep = data["sweep"]["conditions"]
    assert sweep["describe"]["token_ratio_mean"] > sweep["short"]["token_ratio_mean"]
    assert sweep["short"]["ratio_n"] == sweep["describe"]["ratio_n"] == 2
    assert "exponent_from_means" in data["sweep"]
    assert data["figures"] == ["cosines.png", "ratio.png", "per_layer.png", "sweep.png"]
    for name in data["figures"]:
        assert (tmp_path / "diag" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "diag").iterdir() if p.name.startswith(".")]  # no temp files left
