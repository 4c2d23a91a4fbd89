"""The benchmarks refuse options they cannot run with, before any work (they crashed after minutes of it)."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _script(name: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("sampling", ["--cfg-scale", "1"], "--cfg-scale must be > 1"),  # transformers' image generate needs CFG
    ("sampling", ["--repeats", "0"], "must be at least 1, got 0"),  # a median of nothing
    ("dpo_step", ["--steps", "0"], "must be at least 1, got 0"),
    ("sampling", ["--device", "tpu"], "unknown device 'tpu'"),  # (a traceback from deep in the load)
    ("dpo_step", ["--device", "cuda:99"], "asked for, but this torch"),
    ("grpo_memory", ["--micro-batch-sizes", "0"], "must be at least 1, got 0"),
    ("sampling", ["--dtype", "foo"], "unknown dtype 'foo'"),  # (the dtype was checked only by the load)
    ("dpo_step", ["--dtype", "foo"], "unknown dtype 'foo'"),
    ("grpo_memory", ["--dtype", "int8"], "dtype must be one of"),
    ("sampling", ["--cfg-scale", "nan"], "must be a finite number, got nan"),  # (NaN passed the `<= 1` check)
    ("sampling_profile", ["--cfg-scale", "-1"], "must be from 0 to"),
    ("dpo_step", ["--lora-rank", "0"], "must be at least 1, got 0"),  # (it failed after building the model)
    ("dpo_step", ["--peak-tflops", "0"], "must be > 0, got 0"),  # (0 was ignored, a negative peak taken)
    ("dpo_lr_sweep", ["--model", "/nonexistent"], "model path /nonexistent does not exist"),  # (before --work)
])
def test_a_benchmark_refuses_what_it_cannot_run(script: str, argv: list[str], message: str,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    module = _script(script, monkeypatch)
    monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("the model loaded"), raising=False)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def _run_as_command(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str]:
    """The script as `python benchmarks/SCRIPT.py ARGV` runs it (its `__main__` block, in this process: each
    subprocess would import torch afresh): its exit code and its last line on stderr, which must be its only
    error line."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{script}.py"), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines) and [line for line in lines if ": error: " in line] == lines[-1:]
    return exit_info.value.code, lines[-1]


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("sampling", ["--model", "/nonexistent"], "model path /nonexistent does not exist"),  # (the load's UserError)
    ("grpo_memory", ["--model", "/nonexistent"], "model path /nonexistent does not exist"),
    ("vision_probe", ["--model", "tiny", "--model", "/nonexistent"], "model path /nonexistent does not exist"),
    ("sampling", ["--dtype", "foo"], "unknown dtype 'foo'"),
    ("sampling", ["--cfg-scale", "inf"], "argument --cfg-scale: must be a finite number, got inf"),
    ("dpo_step", ["--lora-rank", "0"], "argument --lora-rank: must be at least 1, got 0"),
    ("damage_agreement", ["--n", "0"], "argument --n: must be at least 1, got 0"),  # (a ZeroDivisionError)
    ("vq_crops", ["--n", "0"], "argument --n: must be at least 1, got 0"),  # (after training a VQ)
    ("recipe_probe", ["--out", "unused", "--n", "0"], "argument --n: must be at least 1, got 0"),  # (after pretrain)
    ("recipe_probe", ["--out", "unused", "--set", "num_layers"], "give FIELD=JSON"),
    ("recipe_probe", ["--out", "unused", "--set", "num_layers=six"], "the value is not JSON"),
    ("recipe_probe", ["--out", "unused", "--set", "steps=10"], "give the joint stage's steps as --steps"),
    ("recipe_probe", ["--out", "unused", "--set", "num_layers=1.5"], "num_layers must be an integer, got 1.5"),
])
def test_a_benchmark_run_as_a_command_refuses_a_bad_flag_in_one_line(script: str, argv: list[str], message: str,
                                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, line = _run_as_command(script, argv, monkeypatch, capsys)
    assert code == 2 and line.startswith(f"{script}.py: error: ") and message in line


def test_the_compile_benchmark_reports_a_childs_refusal_as_its_own(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Each batch size runs in a child process: a child's refusal came back as its traceback, then the parent's
    CalledProcessError."""
    import subprocess

    def refused(command: list[str], **_: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 2, None, "usage: sampling_compile.py [-h]\n"
                                                            "sampling_compile.py: error: no such thing\n")

    monkeypatch.setattr(subprocess, "run", refused)
    code, line = _run_as_command("sampling_compile", ["--batch-sizes", "1", "2"], monkeypatch, capsys)
    assert (code, line) == (2, "sampling_compile.py: error: no such thing")


@pytest.mark.parametrize("script", ["sampling", "sampling_compile", "sampling_profile", "dpo_step", "diagnose_cost",
                                    "dpo_lr_sweep"])
def test_a_benchmark_writes_its_result_beside_itself_from_any_folder(script: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert _script(script, monkeypatch).options().parse_args([]).out == BENCHMARKS / "results" / f"{script}.json"


def test_a_result_with_a_nan_is_refused_not_written_as_invalid_json(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    common = _script("_common", monkeypatch)
    with pytest.raises(ValueError, match="not JSON compliant"):
        common.write_result(tmp_path / "result.json", {"mfu": float("nan")})
    assert not (tmp_path / "result.json").exists()


def test_the_pretraining_speed_benchmark_times_every_stage_and_projects_the_recipe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Run at toy batch sizes: what is checked is that each stage is timed and the projection adds up.)"""
    import json

    from unigap.pretrain import QUICK

    module = _script("pretrain_speed", monkeypatch)
    toy = QUICK.scaled(und_batch=2, gen_batch=2, critique_batch=2, edit_batch=2, vq_batch=2, vision_batch=2)
    monkeypatch.setattr(module, "FULL", toy)
    monkeypatch.setattr(module, "SMALL", {name: 6 for name in module.SMALL})
    module.main(["--device", "cpu", "--steps", "2", "--out", str(tmp_path / "speed.json")])
    result = json.loads((tmp_path / "speed.json").read_text())
    stages = {row["stage"]: row for row in result["stages"]}
    assert list(stages) == ["draw the corpora (CPU)", "VQ-code the corpora", "VQ tokenizer", "vision tower", "joint"]
    assert stages["joint"]["full_steps"] == toy.steps and stages["joint"]["seconds_per_step"] > 0
    assert stages["joint"]["projected_seconds"] == pytest.approx(toy.steps * stages["joint"]["seconds_per_step"])
    assert result["projected_minutes"] * 60 == pytest.approx(sum(row["projected_seconds"] for row in result["stages"]))
    assert result["device"] == "cpu"


def test_the_pretraining_speed_benchmark_keeps_the_cpus_result_apart_from_a_gpus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda` wrote over the CPU's result, whose table the docs quote as this CPU's."""
    import torch

    module = _script("pretrain_speed", monkeypatch)
    assert module.options().parse_args([]).out is None
    assert module.default_out(torch.device("cpu")) == BENCHMARKS / "results" / "pretrain_speed.json"
    assert module.default_out(torch.device("cuda", 0)) == BENCHMARKS / "results" / "pretrain_speed_cuda.json"


@pytest.mark.parametrize(("argv", "message"), [(["--device", "tpu"], "unknown device 'tpu'"),
                                               (["--steps", "0"], "must be at least 1, got 0")])
def test_the_pretraining_speed_benchmark_refuses_what_it_cannot_run(argv: list[str], message: str, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    module = _script("pretrain_speed", monkeypatch)
    monkeypatch.setattr(module, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_the_grpo_memory_benchmark_records_both_stages_for_whole_groups_and_spans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    module = _script("grpo_memory", monkeypatch)
    module.main(["--device", "cpu", "--num-generations", "4", "--micro-batch-sizes", "1", "--repeats", "1", "--out",
                 str(tmp_path / "grpo.json")])
    whole, span = json.loads((tmp_path / "grpo.json").read_text())["results"]
    assert (whole["micro_batch_size"], span["micro_batch_size"]) == (None, 1)
    for stage in ("generate", "refine"):
        assert 0 < span[stage]["saved_mib"] < whole[stage]["saved_mib"] and span[stage]["seconds"] > 0


def test_the_lr_sweep_trains_each_run_as_the_study_does_and_keeps_to_its_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """It called `StudyRunner.train`, which the study's runner no longer has (its arms' builders train): an
    AttributeError after the pairs and the base evaluation. Its runs are named by lr alone, so another sweep's (of
    other steps or n) in the same --work would have been reused as its own."""
    import json

    from unigap.errors import UserError

    module = _script("dpo_lr_sweep", monkeypatch)
    trained = []

    def evaluated(runner, method: str, seed: int = 0) -> None:
        (runner.run_dir(method, seed)).mkdir(parents=True, exist_ok=True)
        report = {"understanding": {"accuracy": 0.5}, "generation": {"accuracy": 0.4}, "nonunification": {"score": 0.1}}
        (runner.run_dir(method, seed) / "eval.json").write_text(json.dumps(report))
        trained.append((runner.config.lr, method))

    def pairs(runner, task: str) -> None:
        runner.prefs_file(task).parent.mkdir(parents=True, exist_ok=True)
        runner.prefs_file(task).write_text("")

    monkeypatch.setattr(module.StudyRunner, "build_pairs", pairs)
    monkeypatch.setattr(module.StudyRunner, "evaluate_base", lambda runner, seed: evaluated(runner, module.BASE))
    def trained_as_the_study_does(runner, method: str, seed: int) -> None:
        assert runner.eval_file(module.BASE, seed).is_file()  # its win rate reads the base's evaluation there
        evaluated(runner, method, seed)

    monkeypatch.setattr(module, "train_strategy", trained_as_the_study_does)
    argv = ["--lrs", "1e-4", "--steps", "2", "--n", "2", "--work", str(tmp_path / "work"), "--out",
            str(tmp_path / "sweep.json")]
    result = module.main(argv)
    assert [row["method"] for row in result["rows"]] == [module.BASE, "und-only", "gen-only"]
    assert trained == [(module.FULL.lr, module.BASE), (1e-4, "und-only"), (1e-4, "gen-only")]
    with pytest.raises(UserError, match="steps: 2 → 3"):
        module.main([*argv[:3], "3", *argv[4:]])


def test_the_dpo_benchmark_counts_a_checkpointed_steps_model_flops_without_an_unchecked_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model FLOPs of a checkpointed step were counted on a step run without checkpointing, which needs the memory
    checkpointing saves: on a GPU it ran out of it at every batch the option is for (and set the recorded peak)."""
    import torch

    bench = _script("dpo_step", monkeypatch)
    um = bench._tiny_model(tmp_path, "cpu", None)
    und, gen = bench._pairs(um, 2)
    um.add_lora(rank=4, alpha=8, dropout=0.0, gradient_checkpointing=True)
    um.model.train()
    step = bench._stepper(um, und, gen, False, 2)
    model, executed = bench.model_and_executed_flops(um, step, bench._policy_forward(um, und, gen, 2))
    um.model.activation_checkpointing_disable()
    plain = bench.step_flops(step, um.device)  # (on the tiny model a step without checkpointing fits)
    assert executed > 1.3 * plain and model == pytest.approx(plain, rel=0.01)
    assert torch.is_grad_enabled()


def test_the_vision_probe_reads_a_tower_loaded_in_another_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float32 CPU pixels went straight into the tower, which a GPU loads in bf16 by default: the first forward
    failed."""
    import numpy as np
    import torch

    from unigap.model import load_model
    from unigap.pretrain.vq import to_pixels

    probe = _script("vision_probe", monkeypatch)
    tower = load_model("tiny", dtype="bfloat16").model.model.vision_model.eval()
    features = probe.patch_features(tower, to_pixels(np.full((3, 64, 64, 3), 255, np.uint8)))
    assert features.dtype == torch.float32 and features.device.type == "cpu" and features.shape[0] == 3
