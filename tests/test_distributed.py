"""Data parallelism: two CPU processes (gloo, `accelerate launch`) follow the one-process loss curve of the same global
batch (SFT, multi-task DPO, self-improvement, GRPO) and write the one-process output of every sampling command
(prefs build, eval, refine). Slow: process launches."""

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


@pytest.mark.parametrize("name", ["data_parallel.yaml", "janus_pro_7b.yaml"])
def test_the_documented_accelerate_configs_load(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(Path(__file__).parents[1] / "configs" / "accelerate" / name)
    assert config.distributed_type == "MULTI_GPU" and config.num_machines == 1 and config.mixed_precision == "no"


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
    (tmp_path / "run.toml").write_text("batch_size = 6\nlora_rank = 4\nlora_alpha = 8\nlora_dropout = 0.0\n"
                                       "prompt_dropout = 0.5\n")  # dropped rows must shard with their rows
    one, two = _train(tmp_path, tmp_path / "one", 1), _train(tmp_path, tmp_path / "two", 2)
    assert [r["step"] for r in two] == [0, 1, 2]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "und/loss", "gen/loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["step"], key)
    x, y = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2


def test_a_process_whose_share_of_a_task_is_empty_waits_for_the_others(tmp_path: Path) -> None:
    """One generation row on two processes: the second has no row of that task at any step (it used to raise in
    backward while the first waited in the loss's all-reduce)."""
    write_dataset(tmp_path, 4, 0, "train", questions=2)
    (tmp_path / "one_row.jsonl").write_text((tmp_path / "samples.jsonl").read_text().splitlines()[0] + "\n")
    (tmp_path / "run.toml").write_text("batch_size = 4\nlora_rank = 4\nlora_alpha = 8\nlora_dropout = 0.0\n")
    sft = ("--objective", "sft", "--und-data", str(tmp_path / "questions.jsonl"), "--gen-data",
           str(tmp_path / "one_row.jsonl"))
    one, two = _train(tmp_path, tmp_path / "one", 1, sft), _train(tmp_path, tmp_path / "two", 2, sft)
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "und/loss", "gen/loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["step"], key)


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
    bf16 = _train(tmp_path, tmp_path / "bf16", 2, (*dpo, "--dtype", "bfloat16"))  # the LoRA float32, the head bf16
    assert [row["step"] for row in bf16] == [0, 1, 2] and all(row["grad_norm"] > 0 for row in bf16)


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


def _both(args: list[str], out: Path) -> tuple[Path, Path]:
    """ARGS run in one process into OUT/one and in two into OUT/two."""
    for processes, name in ((1, "one"), (2, "two")):
        _launch([*args, "--out", str(out / name)], processes)
    return out / "one", out / "two"


def test_eval_and_refine_on_two_processes_write_the_one_process_reports(tmp_path: Path) -> None:
    files = {}
    for processes in (1, 2):
        report = tmp_path / f"eval-{processes}.json"
        _launch(["eval", "--model", "tiny", "--n", "5", "--batch-size", "2", "--out", str(report)], processes)
        files[processes] = json.loads(report.read_text())["records"]
    for kind in ("generation", "understanding"):
        assert [r["verified" if kind == "generation" else "answer"] for r in files[2][kind]] == \
               [r["verified" if kind == "generation" else "answer"] for r in files[1][kind]]
    assert [r["p_yes"] for r in files[2]["generation"]] == pytest.approx([r["p_yes"] for r in files[1]["generation"]],
                                                                         abs=1e-4)
    one, two = _both(["refine", "--model", "tiny", "--n", "5", "--rounds", "2", "--batch-size", "2"], tmp_path)
    a, b = (json.loads((d / "refine.json").read_text()) for d in (one, two))
    assert [r["reflections"] for r in b["records"]] == [r["reflections"] for r in a["records"]]
    assert [r["verified"] for r in b["records"]] == [r["verified"] for r in a["records"]]
    assert b["best_of_n"]["accuracy"] == a["best_of_n"]["accuracy"]


def test_refine_train_two_processes_match_one(tmp_path: Path) -> None:
    (tmp_path / "grpo.toml").write_text("prompts_per_step = 3\nlora_rank = 4\nlora_alpha = 8\neval_rounds = 1\n"
                                        "max_completion_length = 8\n")
    one, two = _both(["refine", "train", "--model", "tiny", "--steps", "2", "--num-generations", "2", "--eval-n", "3",
                      "--config", str(tmp_path / "grpo.toml")], tmp_path)
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["stage"] for r in logs[1]] == ["generate", "refine"]
    for a, b in zip(*logs, strict=True):
        assert sorted(b) == sorted(a)
        for key in ("loss", "grad_norm", f"{a['stage']}/reward", "kl"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-5), (a["step"], key)
    x, y = (load_file(d / "adapter_model.safetensors") for d in (one, two))
    assert all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)
    a, b = (json.loads((d / "grpo.json").read_text()) for d in (one, two))
    assert b["after"]["final"] == a["after"]["final"]


def test_selfimprove_two_processes_match_one(tmp_path: Path) -> None:
    (tmp_path / "si.toml").write_text("batch_size = 3\nlora_rank = 4\nlora_alpha = 8\nlora_dropout = 0.0\n"
                                      "epoch_eval_n = 2\nsample_batch = 4\naudit_size = 6\nmethod = \"curriculum-dpo\"\n")
    one, two = _both(["selfimprove", "--model", "tiny", "--n-prompts", "5", "--samples", "2", "--epochs", "2",
                      "--eval-n", "3", "--no-guard", "--config", str(tmp_path / "si.toml")], tmp_path)
    epochs = [[json.loads(line) for line in (d / "epochs.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["epoch"] for r in epochs[1]] == [0, 1, 2] and epochs[0][-1]["pairs"] > 0
    for a, b in zip(*epochs, strict=True):
        assert sorted(b) == sorted(a)
        for key in ("loss", "rewards/margins", "pairs", "val_generation_accuracy"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-5), (a["epoch"], key)
    assert (two / "pool" / "round0.jsonl").read_text() == (one / "pool" / "round0.jsonl").read_text()
    a, b = (json.loads((d / "selfimprove.json").read_text()) for d in (one, two))
    for metric, key in (("generation_accuracy", "accuracy"), ("understanding_accuracy", "accuracy"),
                        ("nonunification", "score")):
        assert b["after"][metric][key] == a["after"][metric][key]
    assert b["after"]["nonunification"]["mean_p_yes"]["mean"] == pytest.approx(
        a["after"]["nonunification"]["mean_p_yes"]["mean"], abs=1e-4)


def _collectives(rank: int, world: int, port: int, failures: Path) -> None:
    """One process of `test_a_failing_process_stops_every_process`: the env `accelerate launch` would set."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    from unigap import distributed

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    if rank == 0:
        a.grad = torch.ones(2)
    distributed.sum_gradients([a, b])  # a: summed over processes; b: no process gave one, so it keeps none
    assert torch.equal(a.grad, torch.ones(2)) and b.grad is None
    assert list(distributed.ordered_rounds([1, 2, 3], lambda x: 10 * x)) == [[10, 20], [30]]

    def fail_on_one(x: int) -> int:
        if x == 2:
            raise ValueError("bad item")
        return x

    try:
        list(distributed.ordered_rounds([1, 2], fail_on_one))
    except (ValueError, RuntimeError) as exc:
        (failures / str(rank)).write_text(f"{type(exc).__name__}: {exc}")
    distributed.close()  # as the CLI does: without it a process can abort at exit
    assert not torch.distributed.is_initialized()
    distributed.close()  # a no-op once closed


def test_a_failing_process_stops_every_process(tmp_path: Path) -> None:
    """An error on one process reaches the others as an error, not as a wait in the next collective."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collectives, args=(2, port, tmp_path), nprocs=2, join=True)
    assert (tmp_path / "1").read_text() == "ValueError: bad item"
    assert (tmp_path / "0").read_text() == "RuntimeError: process 1 failed: ValueError: bad item"


def _dropout_run(rank: int, world: int, port: int, out: Path, kill_at: int | None) -> None:
    """One process of a 2-process DPO run with LoRA dropout, killed (every process) after `kill_at` steps or resumed."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from unigap import distributed
    from unigap.model import load_model
    from unigap.train.config import TrainConfig
    from unigap.train.dpo import GenerationPair
    from unigap.train.trainer import DPOTrainer

    um = load_model("tiny")
    n = um.num_image_tokens
    pairs = [GenerationPair(f"a red circle {i}", (i,) * n, (i + 1,) * n, -100.0, -100.0) for i in range(4)]
    config = TrainConfig(strategy="gen-only", steps=4, batch_size=4, lora_rank=2, lora_alpha=4.0, lora_dropout=0.3,
                         checkpoint_every=2, lr=1e-3)

    def killed(step: int, record: dict) -> None:
        if step == kill_at:
            raise KeyboardInterrupt

    try:
        DPOTrainer(um, config, [], pairs, out).train(resume=kill_at is None and out.exists(), on_step=killed)
    except KeyboardInterrupt:
        pass
    distributed.close()


def test_with_dropout_a_killed_two_process_run_resumes_to_the_unbroken_one(tmp_path: Path) -> None:
    """Each process draws its own dropout masks, from a stream every checkpoint renews, so the checkpoint (which
    holds the first process's stream) resumes every process as the unbroken run goes on."""
    import socket

    import torch.multiprocessing as mp

    for out, kill_at in ((tmp_path / "whole", None), (tmp_path / "cut", 3), (tmp_path / "cut", None)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_dropout_run, args=(2, port, out, kill_at), nprocs=2, join=True)
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("whole", "cut")]
    assert [r["step"] for r in logs[1]] == [0, 1, 2, 3] and logs[1] == logs[0]
    x, y = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "cut"))
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_one_process_command_refuses_a_launcher(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from unigap.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv, name in ((["generate", "--prompt", "a red circle", "--out", "x"], "generate"),
                       (["prefs", "export", "a.jsonl", "--out", "b.jsonl"], "prefs export")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert f"`unigap {name}` runs in one process" in capsys.readouterr().err
