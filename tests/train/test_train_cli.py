"""`unigap train` end to end on built preference files; user mistakes exit 2 with one message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unigap.cli import main
from unigap.model import load_model
from unigap.prefs.build import BuildOptions, build_preferences
from unigap.prefs.rows import write_rows


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def files(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("prefs")
    um = load_model(tiny_dir)
    und = build_preferences(um, BuildOptions("und", 3, 0, str(tiny_dir), fallback_gt=True))
    gen = build_preferences(um, BuildOptions("gen-real", 3, 0, str(tiny_dir)))
    config = root / "small.toml"
    config.write_text("lora_rank = 4\nlora_alpha = 8\ncheckpoint_every = 2\nsteps = 10\n")
    return write_rows(root / "und.jsonl", und), write_rows(root / "gen.parquet", gen), config


def test_train_from_files(tiny_dir: Path, files, tmp_path: Path, capsys) -> None:
    und, gen, config = files
    args = [
        "train",
        "--model",
        str(tiny_dir),
        "--strategy",
        "pcgrad",
        "--und",
        str(und),
        "--gen",
        str(gen),
        "--out",
        str(tmp_path),
        "--steps",
        "3",
        "--lr",
        "1e-3",
        "--config",
        str(config),
        "--batch-size",  # (a flag since `accelerate launch` needs one pair per process: a TOML key alone before)
        "2",
    ]
    code, out, _ = run_main(capsys, args)
    assert code == 0 and "trained 3 steps (pcgrad)" in out
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(r["w_und"] == 1.0 for r in log)
    settings = json.loads((tmp_path / "train_config.json").read_text())
    assert (settings["steps"], settings["lora_rank"], settings["lr"], settings["batch_size"]) == (3, 4, 1e-3, 2)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    code, _, err = run_main(capsys, args)
    assert code == 2 and "already holds a run; pass --resume" in err
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for objective in ("und-sft", "unimrg"):  # another objective into this run's --out: refused, nothing touched
        code, _, err = run_main(capsys, ["train", "--model", str(tiny_dir), "--objective", objective, "--out",
                                         str(tmp_path), "--steps", "3"])
        assert code == 2 and "already holds a run" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files_before
    code, out, _ = run_main(capsys, [*args, "--resume"])  # a finished run resumes to the same end
    assert code == 0 and "trained 3 steps" in out


def test_a_resume_under_changed_settings_fails_before_the_pairs_are_read(tiny_dir: Path, files, tmp_path: Path,
                                                                         capsys, monkeypatch) -> None:
    """Reading the pairs encodes their images, and under --bf16, bf16 weights or CFG-mixed log-probs rescores every
    reference (a forward per pair, minutes on a real model): the one-line refusal came after all of it."""
    import unigap.prefs.rows

    und, _, _ = files
    args = ["train", "--model", str(tiny_dir), "--strategy", "und-only", "--und", str(und), "--out", str(tmp_path),
            "--steps", "1"]
    assert run_main(capsys, args)[0] == 0
    monkeypatch.setattr(unigap.prefs.rows, "pairs_of", lambda *_: pytest.fail("the pairs were read first"))
    code, _, err = run_main(capsys, [*args, "--lr", "1e-2", "--resume"])
    assert code == 2 and "cannot resume" in err and "lr: " in err
    code, _, err = run_main(capsys, [*args, "--lr", "1e-2"])  # (not resuming: told so, not about a resume)
    assert code == 2 and "already holds a run; pass --resume" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--strategy": "best"}, "unknown strategy 'best'"),
        ({"--und": "GEN"}, "a 'gen-real' pair, but this file was given as und data"),
        ({"--gen": None}, "strategy 'joint' needs gen preference pairs"),
        ({"--und": "MISSING"}, "preference file not found"),
    ],
)
def test_user_errors(tiny_dir: Path, files, tmp_path: Path, capsys, change: dict, message: str) -> None:
    und, gen, _ = files
    flags = {
        "--model": str(tiny_dir),
        "--strategy": "joint",
        "--und": str(und),
        "--gen": str(gen),
        "--out": str(tmp_path),
    }
    flags |= {k: {"GEN": str(gen), "MISSING": str(tmp_path / "none.jsonl")}.get(v, v) for k, v in change.items()}
    args = ["train", *[item for k, v in flags.items() if v is not None for item in (k, v)]]
    code, _, err = run_main(capsys, args)
    assert code == 2 and message in err
