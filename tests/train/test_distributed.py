"""Data-parallel training: two CPU processes (gloo, `accelerate launch`) follow the one-process loss curve of the
same global batch, for SFT and for multi-task DPO. Slow: process launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unigap.world.dataset import write_dataset

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # float summation order differs between one process and two


def _launch(args: list[str], processes: int) -> str:
    """`python -m unigap.cli ARGS` in one process, or under `accelerate launch` in several (CPU, gloo); its stdout."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "unigap.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _train(data: Path, out: Path, processes: int, objective: tuple[str, ...] | None = None) -> list[dict]:
    objective = objective or ("--objective", "sft", "--und-data", str(data / "questions.jsonl"), "--gen-data",
                              str(data / "samples.jsonl"))
    stdout = _launch(["train", "--model", "tiny", *objective, "--steps", "3", "--config", str(data / "run.toml"),
                      "--out", str(out)], processes)
    assert stdout.count("trained 3 steps") == 1  # one process reports
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path: Path) -> None:
    write_dataset(tmp_path, 16, 0, "train", questions=2)
    (tmp_path / "run.toml").write_text("batch_size = 6\nlora_rank = 4\nlora_alpha = 8\nlora_dropout = 0.0\n")
    one, two = _train(tmp_path, tmp_path / "one", 1), _train(tmp_path, tmp_path / "two", 2)
    assert [r["step"] for r in two] == [0, 1, 2]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "und/loss", "gen/loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["step"], key)
    x, y = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2


def test_dpo_two_processes_match_one(tmp_path: Path) -> None:
    from unigap.model import load_model
    from unigap.prefs.build import BuildOptions, build_preferences
    from unigap.prefs.rows import write_rows

    um = load_model("tiny")
    write_rows(tmp_path / "und.jsonl", build_preferences(um, BuildOptions("und", 4, 0, "tiny", fallback_gt=True)))
    write_rows(tmp_path / "gen.jsonl", build_preferences(um, BuildOptions("gen-real", 4, 0, "tiny")))
    (tmp_path / "run.toml").write_text("batch_size = 4\nlora_rank = 4\nlora_alpha = 8\nlora_dropout = 0.0\n"
                                       "lr = 1e-4\n")
    dpo = ("--strategy", "pcgrad", "--und", str(tmp_path / "und.jsonl"), "--gen", str(tmp_path / "gen.jsonl"))
    one, two = _train(tmp_path, tmp_path / "one", 1, dpo), _train(tmp_path, tmp_path / "two", 2, dpo)
    for a, b in zip(one, two, strict=True):
        for key in ("und_dpo_loss", "gen_dpo_loss", "gen/rewards/margins", "und_grad_norm", "gen_grad_norm", "cos"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-4), (a["step"], key)


def test_prefs_build_on_two_processes_writes_the_one_process_file(tmp_path: Path) -> None:
    files = {}
    for processes in (1, 2):
        out = tmp_path / f"gen-{processes}.jsonl"
        stdout = _launch(["prefs", "build", "--model", "tiny", "--kind", "gen-model", "--n", "5", "--batch-size", "2",
                          "--max-candidates", "12", "--out", str(out)], processes)
        assert stdout.count("wrote") == 1
        files[processes] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["candidate"] for r in files[2]] == [r["candidate"] for r in files[1]]
    for a, b in zip(files[1], files[2], strict=True):
        assert a["chosen_ids"] == b["chosen_ids"] and a["rejected_ids"] == b["rejected_ids"]
        assert b["chosen_ref_logprob"] == pytest.approx(a["chosen_ref_logprob"], abs=1e-4)
