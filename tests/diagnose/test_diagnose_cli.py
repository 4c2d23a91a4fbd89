"""`unigap diagnose` end to end on preference files built by `unigap prefs build`, and its user errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from unigap.cli import main
from unigap.model import load_model


@pytest.fixture(scope="module")
def prefs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("prefs")
    files = {"und": out / "und.jsonl", "gen": out / "gen.jsonl"}
    for kind, path, extra in (
        ("und", files["und"], ["--fallback-gt"]),
        ("gen-real", files["gen"], ["--cfg-scale", "1"]),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["prefs", "build", "--model", str(tiny_dir), "--kind", kind, "--n", "3", "--out", str(path), *extra])
        assert exc.value.code in (0, None)
    return files


def _run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", *argv])
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def test_diagnose_writes_report_and_figures(tiny_dir: Path, prefs: dict[str, Path], tmp_path: Path, capsys) -> None:
    argv = ["--model", str(tiny_dir), "--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--pairs", "4"]
    code, out, err = _run(capsys, [*argv, "--out", str(tmp_path / "d"), "--seed", "3", "--sweep-probes", "1"])
    assert code == 0, err
    assert "wrote" in out and "cos(g_U, g_G)" in out
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert report["n"] == 4 and report["seed"] == 3 and report["model"] == str(tiny_dir)
    pairs = {task: len(path.read_text().splitlines()) for task, path in prefs.items()}
    assert report["distinct_pairs"] == {**pairs, "batches": 4} and max(pairs.values()) < 4
    assert f"4 batches from {pairs['gen']} gen pairs reuse {4 - pairs['gen']} of them" in err  # not independent
    assert "pass a gen file with more pairs" in " ".join(err.split())  # (not --pairs below the 4 it takes)
    assert all((tmp_path / "d" / name).is_file() for name in report["figures"])
    # seeded: a second run gives the same numbers
    _run(capsys, [*argv, "--out", str(tmp_path / "e"), "--seed", "3", "--sweep-probes", "1"])
    again = json.loads((tmp_path / "e" / "diagnostics.json").read_text())
    assert again["samples"] == report["samples"] and again["inter"] == report["inter"]
    assert (tmp_path / "e" / "sweep.png").is_file()  # a rerun without the sweep leaves no stale figure
    _run(capsys, [*argv, "--out", str(tmp_path / "e"), "--seed", "3", "--sweep-probes", "0"])
    figures = json.loads((tmp_path / "e" / "diagnostics.json").read_text())["figures"]
    assert sorted(p.name for p in (tmp_path / "e").glob("*.png")) == sorted(figures) and "sweep.png" not in figures


def test_an_overflowing_beta_skips_the_sweep_and_reports_its_nulls(tiny_dir: Path, prefs: dict[str, Path],
                                                                    tmp_path: Path, capsys) -> None:
    """At beta 1e300 every generation gradient overflows: the report held nulls, then the sweep's ρ raised a
    traceback (exit 1) and wrote nothing."""
    from unigap.errors import UnigapWarning

    argv = ["--model", str(tiny_dir), "--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--pairs", "4"]
    with pytest.warns(UnigapWarning, match="the length sweep is skipped: no generation gradient is finite"):
        code, _, err = _run(capsys, [*argv, "--beta", "1e300", "--sweep-probes", "1", "--out", str(tmp_path / "d")])
    assert code == 0, err
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert "sweep" not in report and "sweep.png" not in report["figures"]


def test_a_run_killed_while_drawing_its_figures_is_its_reruns_to_replace(tiny_dir: Path, prefs: dict[str, Path],
                                                                         tmp_path: Path, capsys, monkeypatch) -> None:
    """A kill between the first figure and the report left only PNGs, which the rerun refused as someone else's (the
    report is written after its figures: in a study it marks the job done). The manifest, written first, says whose
    they are; a user's folder of files named like the figures is still refused."""
    import unigap.diagnose.run as run

    draw = run.write_figures

    def killed(report: dict, directory: Path) -> list[str]:
        (directory / "cosines.png").write_bytes(b"half")
        raise KeyboardInterrupt

    argv = ["--model", str(tiny_dir), "--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--pairs", "4",
            "--sweep-probes", "0", "--out", str(tmp_path / "d")]
    monkeypatch.setattr(run, "write_figures", killed)
    assert _run(capsys, argv)[0] == 130
    assert not (tmp_path / "d" / "diagnostics.json").exists()  # (the study would count the job done, undrawn)
    unfinished = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert unfinished["command"] == "diagnose" and unfinished["ended_at"] is None
    monkeypatch.setattr(run, "write_figures", draw)
    code, _, err = _run(capsys, argv)
    assert code == 0 and (tmp_path / "d" / "cosines.png").read_bytes() != b"half", err
    finished = (tmp_path / "d" / "manifest.json").read_text()
    monkeypatch.setattr(run, "write_figures", killed)  # a rerun killed midway: the finished run's manifest and
    assert _run(capsys, [*argv[:-3], "1", *argv[-2:]])[0] == 130  # report stay together
    assert (tmp_path / "d" / "manifest.json").read_text() == finished
    monkeypatch.setattr(run, "write_figures", draw)
    plots = tmp_path / "plots"  # (named like its figures, and nothing else: taken for a killed run's)
    plots.mkdir()
    (plots / "sweep.png").write_bytes(b"mine")
    code, _, err = _run(capsys, [*argv[:-1], str(plots)])
    assert code == 2 and "holds files of something else" in err and (plots / "sweep.png").read_bytes() == b"mine"


def test_diagnose_a_trained_adapter_reaches_lora_a(
    tiny_dir: Path, prefs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """With B != 0 (a trained adapter, loaded frozen for inference) lora_A gets gradients too."""
    um = load_model(tiny_dir)
    um.add_lora(rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for param in um.shared_lora_parameters().by_factor["lora_B"]:
            param.normal_(0.0, 0.02)
    um.save_adapter(tmp_path / "adapter")
    files = ["--und", str(prefs["und"]), "--gen", str(prefs["gen"])]
    argv = ["--model", str(tiny_dir), "--adapter", str(tmp_path / "adapter"), *files, "--pairs", "4"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run(capsys, [*argv, "--out", str(tmp_path / "d"), "--sweep-probes", "0"])
    assert code == 0, err
    # (the base built the files: with the adapter attached first, every reference was recomputed)
    assert not [w for w in caught if "built by another model" in str(w.message)]
    report = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert report["per_module"]["factors"]["lora_A"]["zero_gradient"] is False
    assert report["adapter"] == str(tmp_path / "adapter") and "sweep" not in report
    assert report["figures"] == ["cosines.png", "ratio.png", "per_layer.png"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pairs", "3"], "--pairs must be at least 4"),
        (["--full-params", "--adapter", "."], "cannot be combined with --adapter"),
        (["--sweep-probes", "-1"], "--sweep-probes must be >= 0"),
        (["--beta", "0"], "--beta must be positive"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    tiny_dir: Path, prefs: dict[str, Path], tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    argv = ["--model", str(tiny_dir), "--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--out", str(tmp_path)]
    code, _, err = _run(capsys, [*argv, *extra])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("unigap: error:") and message in err


def test_bad_inputs_exit_2_with_one_line(tiny_dir: Path, prefs: dict[str, Path], tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    (tmp_path / "file").write_text("")
    mine = tmp_path / "mine"  # a user's folder: its figures' names would have been replaced, its sweep.png removed
    mine.mkdir()
    for name in ("notes.txt", "sweep.png", "cosines.png", "manifest.json"):
        (mine / name).write_text('{"mine": 1}')
    cases = [
        (["--und", str(tmp_path / "missing.jsonl"), "--gen", str(prefs["gen"])], "not found"),
        (["--und", str(bad), "--gen", str(prefs["gen"])], "bad.jsonl:1"),
        (["--und", str(prefs["gen"]), "--gen", str(prefs["gen"])], "given as und data"),
        (["--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--out", str(tmp_path / "file")], "is a file"),
        (["--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--out", str(mine), "--sweep-probes", "0"],
         "holds files of something else than an earlier diagnose run"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
        code, _, err = _run(capsys, ["--model", str(tiny_dir), *args, *out])
        assert code == 2, err
        assert err.count("\n") == 1 and message in err, err
    assert all((mine / name).read_text() == '{"mine": 1}' for name in ("notes.txt", "sweep.png", "cosines.png",
                                                                     "manifest.json"))
    files = ["--und", str(prefs["und"]), "--gen", str(prefs["gen"]), "--out", str(tmp_path / "o")]
    code, _, err = _run(capsys, ["--model", str(tmp_path / "nope"), *files])
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
