"""UniMRG: settings, exact targets, the trainer (keys, what each objective trains, resume), the CLI's errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unigap.cli import main
from unigap.errors import UserError
from unigap.model import load_model
from unigap.unimrg import LOGGED_KEYS, UniMRGConfig, UniMRGTrainer, build_data
from unigap.train.sft import vq_tokens
from unigap.unimrg.data import ENCODE_BATCH, check_instructions
from unigap.unimrg.trainer import train_unimrg
from unigap.world import random_train_scenes, render, render_depth

SMALL = {"n_scenes": 24, "steps": 4, "batch_size": 2, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def data():
    um = load_model("tiny")
    return build_data(um, 24, 0, 2, 0.5, ["reconstruction", "segmentation", "depth"])


def test_config_checks_and_auxiliary_tasks() -> None:
    assert list(UniMRGConfig().auxiliary) == ["reconstruction", "segmentation", "depth"]
    assert UniMRGConfig(objective="und-sft").auxiliary == {}
    assert list(UniMRGConfig(depth_weight=0).auxiliary) == ["reconstruction", "segmentation"]
    with pytest.raises(UserError, match="objective"):
        UniMRGConfig(objective="dpo")
    with pytest.raises(UserError, match="auxiliary weight"):
        UniMRGConfig(reconstruction_weight=0, segmentation_weight=0, depth_weight=0)
    with pytest.raises(UserError, match="lr"):
        UniMRGConfig(lr=0)
    with pytest.raises(UserError, match="prompt-dropout must be 0 for UniMRG"):
        UniMRGConfig(prompt_dropout=0.1)


def test_targets_are_the_vq_ids_of_the_exact_maps(data) -> None:
    um = load_model("tiny")
    scenes = random_train_scenes(24, 0, draw=4)
    assert len(data) == 24 and all(len(qs) == 2 for qs in data.questions)
    assert (data.images == np.stack([render(s) for s in scenes])).all()
    assert torch.equal(data.targets["reconstruction"], vq_tokens(um, list(data.images), ENCODE_BATCH))
    assert torch.equal(data.targets["depth"], vq_tokens(um, [render_depth(s) for s in scenes], ENCODE_BATCH))
    assert not torch.equal(data.targets["segmentation"], data.targets["depth"])
    again = build_data(um, 24, 0, 2, 0.5, ["segmentation"])
    assert [q.text for qs in again.questions for q in qs] == [q.text for qs in data.questions for q in qs]


def test_instructions_must_tokenize_apart() -> None:
    check_instructions(load_model("tiny"), ["reconstruction", "segmentation", "depth"])

    class Same:
        class prompts:  # noqa: N801 - stands in for PromptFormat
            @staticmethod
            def edit_ids(text: str) -> list[int]:
                return [1, 2, 3]

    with pytest.raises(UserError, match="same tokens"):
        check_instructions(Same(), ["segmentation", "depth"])


def _train(data, out: Path, **changes) -> tuple[list[dict], dict]:
    um = load_model("tiny")
    UniMRGTrainer(um, UniMRGConfig(**(SMALL | changes)), data, out).train()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return rows, load_file(out / "adapter_model.safetensors")


def test_unimrg_logs_every_task_and_trains_the_generation_head_und_sft_does_not(data, tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, adapter = _train(data, tmp_path / "unimrg")
    assert not [w for w in caught if "does not know" in str(w.message)]  # UniMRG's own words are no user's mistake
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and set(rows[0]) == set(LOGGED_KEYS)
    assert rows[0]["loss"] == pytest.approx(sum(rows[0][f"{t}/loss"] for t in ("und", "reconstruction",
                                                                               "segmentation", "depth")))
    sft_rows, sft_adapter = _train(data, tmp_path / "sft", objective="und-sft")
    assert set(sft_rows[0]) == {"step", "lr", "loss", "und/loss", "grad_norm"}
    base = load_model("tiny").model.model.generation_head.state_dict()
    prefix = "base_model.model.model.generation_head."

    def head_moved(tensors: dict) -> bool:
        return any(not torch.equal(tensors[prefix + name], value) for name, value in base.items())

    assert head_moved(adapter) and not head_moved(sft_adapter)  # only the maps' losses reach the generation head


def test_a_killed_run_resumes_to_the_same_adapter(data, tmp_path) -> None:
    _, whole = _train(data, tmp_path / "whole")
    um = load_model("tiny")
    trainer = UniMRGTrainer(um, UniMRGConfig(**SMALL), data, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        trainer.train(on_step=lambda step, record: (_ for _ in ()).throw(KeyboardInterrupt) if step == 3 else None)
    um = load_model("tiny")
    resumed = UniMRGTrainer(um, UniMRGConfig(**SMALL), data, tmp_path / "cut")
    with pytest.raises(UserError, match="--resume"):
        resumed.train()
    resumed.train(resume=True)
    cut = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    with pytest.raises(UserError, match="different settings"):
        UniMRGTrainer(load_model("tiny"), UniMRGConfig(**(SMALL | {"lr": 5e-4})), data, tmp_path / "cut").train(True)


def test_a_resume_under_other_settings_fails_before_the_data_is_built(data, tmp_path, monkeypatch) -> None:
    done = []  # (and each step reaches the caller: the study's bar)
    train_unimrg(load_model("tiny"), UniMRGConfig(**SMALL), tmp_path / "run", show_progress=False, data=data,
                 on_step=lambda step, record: done.append(step))
    assert done == list(range(1, SMALL["steps"] + 1))

    def build_data(*args, **kwargs):
        raise AssertionError("the data was built before the settings were checked")

    monkeypatch.setattr("unigap.unimrg.data.build_data", build_data)
    with pytest.raises(UserError, match="different settings: lr: "):
        train_unimrg(load_model("tiny"), UniMRGConfig(**(SMALL | {"lr": 5e-4})), tmp_path / "run", resume=True,
                     show_progress=False)
    with pytest.raises(UserError, match="another model than it was started on"):  # its dtype, here
        train_unimrg(load_model("tiny", dtype=torch.bfloat16), UniMRGConfig(**SMALL), tmp_path / "run", resume=True,
                     show_progress=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "und-sft", "--strategy", "joint"], "--strategy: for --objective dpo only"),
        (["--objective", "unimrg", "--beta", "0.2"], "--beta: for --objective dpo only"),
        (["--objective", "rl"], "unknown --objective 'rl'"),
        ([], "--objective dpo needs --strategy"),
    ],
)
def test_cli_rejects_bad_combinations_in_one_line(args, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_a_strategy_from_the_config_file_is_used(tmp_path, capsys) -> None:
    """`strategy` is a known config key: without --strategy the file's counts (the next error is und-only's)."""
    config = tmp_path / "c.toml"
    config.write_text('strategy = "und-only"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny", "--config", str(config), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "needs --strategy" not in err and "und-only" in err, err


def test_cli_trains_und_sft_from_a_config_file(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("n_scenes = 8\nbatch_size = 2\nsteps = 2\n")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny", "--objective", "und-sft", "--config", str(config), "--out", str(out)])
    assert exit_info.value.code in (0, None)
    assert json.loads((out / "train_config.json").read_text())["objective"] == "und-sft"
    assert (out / "adapter_config.json").is_file() and len((out / "log.jsonl").read_text().splitlines()) == 2
