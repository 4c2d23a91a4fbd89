"""The trainer: logging, grad-weighted refreshes, resume == uninterrupted, NaN stop, config handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_world_fixtures import random_pairs

import unigap.train.trainer as trainer_module
from unigap.errors import UserError
from unigap.model import load_model
from unigap.train.checkpoint import load_checkpoint
from unigap.train.config import TrainConfig
from unigap.train.dpo import TRL_KEYS, TaskLoss
from unigap.train.trainer import DPOTrainer, TrainingDiverged


@pytest.fixture(scope="module")
def pairs(tiny_dir: Path):
    return random_pairs(load_model(tiny_dir), 3)


def config(**changes) -> TrainConfig:
    base = {"strategy": "joint", "steps": 6, "lr": 1e-3, "lora_rank": 4, "lora_alpha": 8.0, "checkpoint_every": 2}
    return TrainConfig(**(base | changes))


def run(tiny_dir: Path, pairs, out: Path, cfg: TrainConfig, **train_kwargs) -> list[dict]:
    und, gen = pairs
    DPOTrainer(load_model(tiny_dir), cfg, und, gen, out).train(**train_kwargs)
    return read_log(out)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_logs_every_step_and_saves_a_peft_adapter(tiny_dir: Path, pairs, tmp_path: Path) -> None:
    log = run(tiny_dir, pairs, tmp_path, config(steps=3))
    assert [r["step"] for r in log] == [0, 1, 2]
    for key in (
        "und_dpo_loss",
        "gen_dpo_loss",
        "und_reward_margin",
        "gen_accuracy",
        "und_kl",
        "gen_kl",
        "w_und",
        "w_gen",
        "und_grad_norm",
        "gen_grad_norm",
        "cos",
        "lr",
        "grad_norm",
        *(f"{task}/{name}" for task in ("und", "gen") for name in TRL_KEYS),
    ):
        assert all(key in r for r in log), key
    first = log[0]
    assert first["gen/logps/chosen"] == pytest.approx(first["gen/ref_logps/chosen"], abs=1e-3)  # B = 0 at step 0
    assert first["gen/rewards/margins"] == pytest.approx(
        first["gen/rewards/chosen"] - first["gen/rewards/rejected"], abs=1e-5)
    assert log[0]["und_dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)  # B = 0: policy == reference
    assert log[0]["lr"] == pytest.approx(1e-3) and log[2]["lr"] < log[1]["lr"] < 1e-3  # cosine
    um = load_model(tiny_dir)
    um.load_adapter(tmp_path, trainable=True)  # the PEFT-format adapter loads back, trained
    assert any(float(p.detach().abs().max()) > 0 for p in um.shared_lora_parameters().by_factor["lora_B"])


def test_grad_weighted_logs_inverse_norm_weights(tiny_dir: Path, pairs, tmp_path: Path) -> None:
    log = run(
        tiny_dir, pairs, tmp_path, config(strategy="grad-weighted", steps=7, reweight_every=3, checkpoint_every=7)
    )
    w = [r["w_und"] for r in log]
    assert w[:3] == [0.5] * 3
    for refresh in (3, 6):
        r = log[refresh]
        assert w[refresh] == pytest.approx(
            r["gen_grad_norm"] / (r["und_grad_norm"] + r["gen_grad_norm"]), rel=1e-6
        )
        assert log[refresh]["w_gen"] == pytest.approx(1 - w[refresh])
    assert w[3] == w[4] == w[5] and w[6] != w[5]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_dir: Path, pairs, tmp_path: Path) -> None:
    cfg = config(strategy="grad-weighted", reweight_every=2, lora_dropout=0.3)  # dropout: RNG state matters
    full = run(tiny_dir, pairs, tmp_path / "full", cfg)

    def kill(step: int, record: dict) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, pairs, tmp_path / "killed", cfg, on_step=kill)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint")["step"] == 4
    with pytest.raises(UserError, match="--resume"):
        run(tiny_dir, pairs, tmp_path / "killed", cfg)
    resumed = run(tiny_dir, pairs, tmp_path / "killed", cfg, resume=True)

    assert resumed == full  # the log too: steps 0-3 kept, 4-5 redone identically
    expected = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_refuses_changed_settings(tiny_dir: Path, pairs, tmp_path: Path) -> None:
    run(tiny_dir, pairs, tmp_path, config(steps=2))
    run(tiny_dir, pairs, tmp_path, config(steps=2, gradient_checkpointing=True), resume=True)  # the same gradients:
    # the usual way on after running out of memory is not refused
    with pytest.raises(UserError, match="lr: 0.001 → 0.01"):
        run(tiny_dir, pairs, tmp_path, config(steps=2, lr=1e-2), resume=True)
    und, gen = pairs  # a GPU's bf16 run resumed on a CPU in float32 would go on with other numbers
    with pytest.raises(UserError, match=r"another model than it was started on \(.*model_dtype: \"float32\" → \"bfloat16\""):
        DPOTrainer(load_model(tiny_dir, dtype=torch.bfloat16), config(steps=2), und, gen, tmp_path).train(resume=True)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny_dir: Path, pairs, tmp_path: Path, monkeypatch) -> None:
    real = trainer_module.task_dpo_loss
    calls = []

    def poisoned(um, batch, options):
        result = real(um, batch, options)
        calls.append(1)
        if len(calls) == 7:  # step 3, und task (two tasks per step)
            return TaskLoss(result.loss * float("nan"), result.metrics)
        return result

    monkeypatch.setattr(trainer_module, "task_dpo_loss", poisoned)
    with pytest.raises(
        TrainingDiverged, match=r"non-finite und DPO loss \(nan\) at step 3.*last good checkpoint \(step 2\)"
    ):
        run(tiny_dir, pairs, tmp_path, config())
    assert load_checkpoint(tmp_path / "checkpoint")["step"] == 2
    assert [r["step"] for r in read_log(tmp_path)] == [0, 1, 2]
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_strategy_needs_its_data(tiny_dir: Path, pairs, tmp_path: Path) -> None:
    und, _ = pairs
    with pytest.raises(UserError, match="needs gen preference pairs"):
        DPOTrainer(load_model(tiny_dir), config(), und, [], tmp_path)
    log = run(tiny_dir, (und, []), tmp_path, config(strategy="und-only", steps=1))
    assert log[0]["w_und"] == 1.0 and "gen_dpo_loss" not in log[0] and log[0]["cos"] is None


def test_config_precedence_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('strategy = "fixed"\nlr = 1\nsteps = 20\nfixed_w_und = 0.9\n')
    cfg = TrainConfig.load(toml, steps=5, lr=None)
    assert (cfg.strategy, cfg.lr, cfg.steps, cfg.fixed_w_und, cfg.beta) == ("fixed", 1.0, 5, 0.9, 0.1)
    assert isinstance(cfg.lr, float)
    toml.write_text("lrr = 1\n")
    with pytest.raises(UserError, match="unknown config key"):
        TrainConfig.load(toml)
    toml.write_text("learning_rate = 1e-4\nmax_steps = 2\n")  # TRL's names: unigap's are named
    with pytest.raises(UserError, match=r"unknown config key\(s\) learning_rate \(unigap's lr\), max_steps "
                                        r"\(unigap's steps\); known: "):
        TrainConfig.load(toml)
    with pytest.raises(UserError, match="unknown strategy"):
        TrainConfig.load(None, strategy="best")
    with pytest.raises(UserError, match="config key steps must be an integer, got 1.5"):
        TrainConfig.load(None, steps=1.5)
    with pytest.raises(UserError, match="TrainConfig.nll_weight must be a finite number, got nan"):
        TrainConfig(strategy="joint", nll_weight=float("nan"))
    # as the TOML file's values are: an lr of inf trained on NaN, a seed past 64 bits failed in torch
    with pytest.raises(UserError, match="TrainConfig.lr must be a finite number, got inf"):
        TrainConfig(strategy="joint", lr=float("inf"))
    with pytest.raises(UserError, match=f"TrainConfig.seed does not fit in 64 bits, got {2**70}"):
        TrainConfig(strategy="joint", seed=2**70)
    assert TrainConfig(strategy="joint", max_grad_norm=10**20).max_grad_norm == 1e20  # (a float setting, as TOML's)


def test_generation_pairs_under_cfg_are_rescored_against_the_base_model(tiny_dir: Path, pairs) -> None:
    """With gen_cfg_scale the policy is scored on CFG-mixed logits, so the stored (conditional) reference log-probs
    are replaced by the base model's under the same mixture: at step 0 policy == reference, the margin is 0."""
    from unigap.train.dpo import task_dpo_loss

    und, gen = pairs
    cfg = config(strategy="gen-only", gen_cfg_scale=5.0)
    assert cfg.dpo.cfg_scale == 5.0 and config().dpo.cfg_scale is None
    trainer = DPOTrainer(load_model(tiny_dir), cfg, und, gen, Path("unused"))
    rescored = trainer.pairs["gen"]
    assert [p.ref_chosen for p in rescored] != [p.ref_chosen for p in gen]
    result = task_dpo_loss(trainer.um, rescored[:1], cfg.dpo)
    assert result.metrics["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert result.metrics["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_references_are_rescored_a_few_pairs_at_a_time(tiny_dir: Path, pairs, monkeypatch) -> None:
    """A file of thousands of pairs scored in one forward pass would not fit on a GPU (576-token images, 16k logits)."""
    import unigap.train.dpo as dpo_module

    scored: list[int] = []
    real = dpo_module.sequence_logprobs
    monkeypatch.setattr(dpo_module, "sequence_logprobs",
                        lambda um, chunk, cfg_scale=None: scored.append(len(chunk)) or real(um, chunk, cfg_scale))
    und, gen = pairs
    many = list(gen) * 4
    trainer = DPOTrainer(load_model(tiny_dir), config(strategy="gen-only", gen_cfg_scale=5.0), und, many,
                         Path("unused"))
    assert scored == [dpo_module.REFERENCE_BATCH, len(many) - dpo_module.REFERENCE_BATCH]
    references = [p.ref_chosen for p in trainer.pairs["gen"]]
    assert references == pytest.approx(references[: len(gen)] * 4, abs=1e-4)  # a pair's, whatever its batch


@pytest.mark.parametrize("strategy", ["upgrad", "dualproj", "imtl-g", "aligned-mtl"])
def test_the_strategies_combine_the_gradients_in_float32_under_bf16_autocast(tiny_dir: Path, pairs, tmp_path: Path,
                                                                             strategy: str, monkeypatch) -> None:
    """`--bf16` autocast took the combination's products to bfloat16: upgrad, dualproj and imtl-g raised (numpy and
    pinv take no bfloat16), aligned-mtl ran with other weights (on this fixture 0.005 off: the spy tells it)."""
    import unigap.train.trainer as trainer_module

    autocast: list[bool] = []
    build = trainer_module.build_strategy

    def spied(*args, **kwargs):
        built = build(*args, **kwargs)
        combine = built.combine
        built.combine = lambda *a, **k: autocast.append(torch.is_autocast_enabled("cpu")) or combine(*a, **k)
        return built

    monkeypatch.setattr(trainer_module, "build_strategy", spied)
    weights = [run(tiny_dir, pairs, tmp_path / str(bf16), config(strategy=strategy, steps=1, bf16=bf16))[0]
               for bf16 in (False, True)]
    assert all(abs(weights[0][key] - weights[1][key]) < 0.05 for key in ("w_und", "w_gen"))
    assert autocast == [False, False]  # the combination ran outside the policy's autocast


def test_under_bf16_autocast_training_starts_exactly_at_the_reference(tmp_path: Path) -> None:
    """The references are rescored under the policy's autocast in batches of the policy's: rescored 8 pairs at a
    time, bf16's batch-shape rounding put step 0's generation margin at -0.028, not 0."""
    shipped = load_model("tiny")  # (on the random tiny model the two batchings happened to round alike)
    und, gen = random_pairs(shipped, 3)
    DPOTrainer(shipped, config(steps=1, bf16=True), und, gen, tmp_path).train()
    first = read_log(tmp_path)[0]
    assert all(first[f"{task}_dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) for task in ("und", "gen"))
    assert first["und/rewards/margins"] == first["gen/rewards/margins"] == 0.0


def test_in_bf16_weights_training_starts_exactly_at_the_reference(tmp_path: Path) -> None:
    """bf16 weights (a GPU's default load) round with a batch's shape as autocast does: references stored 3 pairs at a
    time put step 0's generation margin off 0 (-0.006 on `prefs build`'s pairs), which the stuck-at-ln-2 signal
    reads."""
    shipped = load_model("tiny", dtype="bfloat16")
    und, gen = random_pairs(shipped, 3)
    DPOTrainer(shipped, config(steps=1), und, gen, tmp_path).train()
    first = read_log(tmp_path)[0]
    assert first["und/rewards/margins"] == first["gen/rewards/margins"] == 0.0


def test_a_checkpoint_file_torch_did_not_write_is_one_clear_error(tmp_path) -> None:
    """A foreign or corrupt checkpoint.pt that is not a zip (an old pickle, a text file) raised UnpicklingError."""
    from unigap.errors import UserError

    (tmp_path / "checkpoint.pt").write_bytes(b"hello, not a checkpoint at all\n" * 4)
    for mmap in (False, True):
        with pytest.raises(UserError, match="cannot read checkpoint"):
            load_checkpoint(tmp_path, mmap=mmap)
