"""`unigap tune` (choosing the DPO defaults on the validation split) and the study's over-optimisation flag on a run
built to over-optimise."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from unigap.cli import main
from unigap.errors import UserError
from unigap.report import build_report
from unigap.study import StudyConfig, run_study
from unigap.train.defaults import LN2
from unigap.study.tune import TuneConfig, choose, diagnostics, table, tune


@pytest.fixture(scope="module")
def small_tune() -> TuneConfig:
    """On the shipped model: the random test model's two samples of a prompt score alike, so no gen-model pair."""
    return TuneConfig(model="tiny", kinds=("gen-real", "gen-model"), lrs=(3e-2,), nll_weights=(0.0,),
                      steps=2, eval_every=1, n=4, gen_pairs=2, sample_batch_size=4)


@pytest.fixture(scope="module")
def said() -> list[str]:
    """The progress lines the tuning below printed."""
    return []


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, small_tune: TuneConfig, said: list[str]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tune") / "run"
    return out, tune(small_tune, out, progress=said.append)


def test_every_grid_point_is_evaluated_at_each_checkpoint_against_the_base(tuned: tuple[Path, dict],
                                                                           said: list[str]) -> None:
    out, results = tuned
    # each evaluation is said as it ends (a grid point's training and evaluations ran minutes in silence)
    name = results["runs"][0]["name"]
    assert [line for line in said if line.startswith(f"{name}: ")] == [
        f"{name}: step {p['step']}/2, accuracy {p['accuracy']:.3f}" for p in results["runs"][0]["points"]]
    assert json.loads((out / "results.json").read_text()) == results
    assert [run["name"] for run in results["runs"]] == ["gen-real_lr0.03_beta0.1_nll0", "gen-model_lr0.03_beta0.1_nll0"]
    base = results["base"]["accuracy"]
    for run in results["runs"]:
        assert [p["step"] for p in run["points"]] == [1, 2]
        log = [json.loads(line) for line in (out / "runs" / run["name"] / "log.jsonl").read_text().splitlines()]
        for point, row in zip(run["points"], log, strict=True):  # one step per evaluation: its own log record
            assert point["delta"] == pytest.approx(point["accuracy"] - base)
            assert point["loss"] == pytest.approx(row["gen_dpo_loss"])
            assert point["chosen_shift"] == pytest.approx(row["gen/logps/chosen"] - row["gen/ref_logps/chosen"])
    chosen = results["chosen"]
    assert chosen["accuracy"] == max(p["accuracy"] for run in results["runs"] for p in run["points"])
    assert (out / "pairs" / "gen-model.jsonl").is_file() and (out / "base.json").is_file()
    assert len(table(results)) == 1 + len(results["runs"])


def test_a_rerun_reuses_finished_runs_and_other_settings_are_refused(tuned: tuple[Path, dict],
                                                                    small_tune: TuneConfig, tmp_path: Path) -> None:
    """(On a copy: a rerun rewrites results.json, which the other tests of the module read as the first run's.)"""
    out, results = tmp_path / "run", tuned[1]
    shutil.copytree(tuned[0], out)
    curve = out / "runs" / results["runs"][0]["name"] / "curve.json"
    stamp = curve.stat().st_mtime_ns
    assert tune(small_tune, out) == results
    assert curve.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="other settings.*steps: 2 → 3"):
        tune(replace(small_tune, steps=3), out)
    assert json.loads((out / "tune.json").read_text())["steps"] == 2
    strict = tune(replace(small_tune, kl_budget=1e-9), out)["chosen"]  # selection only: no run is redone
    assert strict is None or strict["kl"] <= 1e-9
    assert curve.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="trained with lr 0.03, not 0.0300000001; give that value"):  # (named alike)
        tune(replace(small_tune, lrs=(0.0300000001,)), out)


def test_the_cli_writes_a_manifest_and_keeps_other_commands_out(tuned: tuple[Path, dict], small_tune: TuneConfig,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command's output directory holds its manifest; and until it does, tune.json names the command, so
    another one is not written into a tuning still running."""
    import unigap.study.tune as tune_module

    out = tmp_path / "run"
    shutil.copytree(tuned[0], out)
    real = tune_module.tune  # (the CLI's sampling batch, which the finished runs were not evaluated with)
    monkeypatch.setattr(tune_module, "tune", lambda config, *args, **kwargs: real(
        replace(config, sample_batch_size=small_tune.sample_batch_size), *args, **kwargs))
    flags = ["--kinds", "gen-real,gen-model", "--lrs", "0.03", "--nll-weights", "0", "--steps", "2", "--eval-every",
             "1", "--n", "4", "--pairs", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *flags, "--out", str(out)])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "tune" and manifest["config"]["lrs"] == [0.03] and manifest["ended_at"]
    assert manifest["device"] == "cpu"
    for finished in (True, False):
        if not finished:
            (out / "manifest.json").unlink()
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--objective", "sft", "--out", str(out)])
        assert exit_info.value.code == 2 and "holds the output of `unigap tune`" in capsys.readouterr().err


def test_a_grid_grown_on_a_rerun_reuses_the_finished_points(tuned: tuple[Path, dict], small_tune: TuneConfig,
                                                             tmp_path: Path) -> None:
    """Grid values are free to change on a rerun, and a directory tuned before an axis existed (no such key in its
    tune.json or curves) resumes as the axis's usual value: each run folder is named for its own settings."""
    out, results = tuned
    old = tmp_path / "old"
    shutil.copytree(out, old)
    settings = json.loads((old / "tune.json").read_text())
    (old / "tune.json").write_text(json.dumps({k: v for k, v in settings.items()
                                               if k not in ("cfg_scales", "pair_batches")}))
    for curve_file in old.glob("runs/*/curve.json"):
        curve = json.loads(curve_file.read_text())
        curve_file.write_text(json.dumps({k: v for k, v in curve.items() if k not in ("gen_cfg_scale", "batch_size")}))
    stamps = {f: f.stat().st_mtime_ns for f in old.glob("runs/*/curve.json")}
    grown = tune(replace(small_tune, kinds=("gen-real",), pair_batches=(1, 2)), old)
    assert [run["name"] for run in grown["runs"]] == ["gen-real_lr0.03_beta0.1_nll0", "gen-real_lr0.03_beta0.1_nll0_bs2"]
    assert all(f.stat().st_mtime_ns == stamp for f, stamp in stamps.items())
    assert grown["runs"][0]["points"] == results["runs"][0]["points"]
    assert json.loads((old / "runs" / grown["runs"][1]["name"] / "train_config.json").read_text())["batch_size"] == 2


def test_evaluating_checkpoints_leaves_training_untouched(tuned: tuple[Path, dict], small_tune: TuneConfig,
                                                          tmp_path: Path) -> None:
    out, results = tuned
    once = tune(replace(small_tune, kinds=("gen-real",), eval_every=2), tmp_path / "once")
    assert [p["step"] for p in once["runs"][0]["points"]] == [2]
    name = results["runs"][0]["name"]
    logs = [(d / "runs" / name / "log.jsonl").read_text() for d in (out, tmp_path / "once")]
    assert logs[0] == logs[1]


def test_a_cfg_grid_point_scores_its_references_under_cfg(tuned: tuple[Path, dict], small_tune: TuneConfig,
                                                          tmp_path: Path) -> None:
    """`--cfg-scales 5` reaches the trainer, which rescores the stored (conditional-only) references under CFG."""
    out, results = tuned
    cfg = tune(replace(small_tune, kinds=("gen-real",), cfg_scales=(5.0,), eval_every=2), tmp_path / "cfg")
    assert (tmp_path / "cfg" / "pairs" / "gen-real.jsonl").read_text() == (out / "pairs" / "gen-real.jsonl").read_text()
    name = cfg["runs"][0]["name"]
    assert name == "gen-real_lr0.03_beta0.1_nll0_cfg5" and cfg["chosen"]["gen_cfg_scale"] == 5.0
    assert json.loads((tmp_path / "cfg" / "runs" / name / "train_config.json").read_text())["gen_cfg_scale"] == 5.0
    first = [json.loads((d / "runs" / n / "log.jsonl").read_text().splitlines()[0])
             for d, n in ((out, results["runs"][0]["name"]), (tmp_path / "cfg", name))]
    assert first[0]["gen/ref_logps/chosen"] != pytest.approx(first[1]["gen/ref_logps/chosen"])


def test_a_missing_model_fails_before_the_directory_is_claimed(small_tune: TuneConfig, tmp_path: Path) -> None:
    with pytest.raises(UserError):
        tune(replace(small_tune, model=str(tmp_path / "nowhere")), tmp_path / "t")
    assert not (tmp_path / "t" / "tune.json").exists()


def test_the_kl_budget_excludes_drifting_checkpoints() -> None:
    curves = [{"name": "a", "gen_kind": "gen-real", "lr": 1.0, "beta": 0.1, "nll_weight": 0.0,
               "points": [{"step": 1, "accuracy": 0.4, "kl": 1.0}, {"step": 2, "accuracy": 0.6, "kl": 30.0}]}]
    assert choose(curves, None)["step"] == 2
    assert choose(curves, 5.0)["step"] == 1
    assert choose(curves, 0.5) is None


def test_diagnostics_flag_a_loss_near_zero_with_falling_chosen() -> None:
    rows = [{"gen_dpo_loss": 0.01, "gen_kl": -30.0, "gen/logps/chosen": -110.0, "gen/ref_logps/chosen": -100.0,
             "gen/logps/rejected": -160.0, "gen/ref_logps/rejected": -100.0}]
    d = diagnostics(rows)
    assert d["overoptimised"] is True and d["chosen_shift"] == -10.0 and d["rejected_shift"] == -60.0 and d["kl"] == 35.0
    assert diagnostics([{**rows[0], "gen_dpo_loss": LN2}])["overoptimised"] is False


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--lrs", "1e-4,fast"], "expected comma-separated finite numbers"),
     (["--kinds", "gen-bad"], "unknown pair kind gen-bad"),
     (["--eval-every", "500"], "eval_every (500) must not exceed steps (300)"),
     (["--pairs-per-step", "2.5"], "expected comma-separated whole numbers"),
     (["--pairs-per-step", "0"], "pairs per step must be positive integers up to the pairs (128), got 0"),
     (["--pairs-per-step", "1" + "0" * 400], "expected comma-separated whole numbers"),  # (an OverflowError)
     (["--pairs-per-step", "9" * 30], "expected comma-separated whole numbers"),  # (a hang in the trainer)
     (["--pairs-per-step", "200"], "pairs per step must be positive integers up to the pairs (128), got 200")],
)
def test_the_cli_rejects_bad_settings_in_one_line(flags: list[str], message: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *flags, "--out", str(tmp_path / "t")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_a_run_built_to_over_optimise_is_flagged_in_the_report(small_config: StudyConfig, tmp_path: Path) -> None:
    """gen-only DPO at a learning rate far too high: its loss reaches ~0 while the chosen images fall below the
    reference; the report says so in words and draws the log-prob curves."""
    # (60 steps: the report's loss is the mean of the last 50 logged, past the first few steps' fall from ln 2)
    config = replace(small_config, methods=("gen-only",), steps=60, lr=3e-2)
    built = build_report(run_study(config, tmp_path / "s", show_progress=False), tmp_path / "s")
    training = built.results["training"]["gen-only"]
    assert training["gen_overoptimised"] is True and training["gen_chosen_shift"] < 0
    html = (tmp_path / "s" / "report.html").read_text()
    assert "Generation DPO over-optimised in gen-only" in html
    assert (tmp_path / "s" / "logps.png").stat().st_size > 0


def test_the_default_grid_searches_every_generation_pair_kind() -> None:
    """train.defaults sits below prefs, so it spells the kinds out; they must stay prefs' own."""
    from unigap.prefs.kinds import GEN_KINDS
    from unigap.train.defaults import TUNE_GRID

    assert TUNE_GRID["kinds"] == GEN_KINDS


def test_a_grid_point_no_run_can_train_is_refused_before_any_work() -> None:
    """TuneConfig(lrs=(inf,)) built, evaluated the base and built its pairs, then its first run refused the lr."""
    with pytest.raises(UserError, match=r"^TuneConfig.lrs \(an item\) must be a finite number, got inf$"):
        TuneConfig(lrs=(1e-4, float("inf")))


@pytest.mark.parametrize(("lrs", "betas"), [((1e-5, 1e-5), (0.1,)), ((1e-5, 1.0000001e-5), (0.1, 0.1000001))])
def test_a_grid_that_names_two_points_alike_is_refused(lrs: tuple, betas: tuple) -> None:
    """Points are run folders named by `:g`; two points of one name shared a folder, the second reading the first's
    finished curve as its own."""
    with pytest.raises(UserError, match="the grid names .*lr1e-05_beta0.1.* more than once"):
        TuneConfig(lrs=lrs, betas=betas)
    assert len(TuneConfig(lrs=(1e-5, 3e-5), betas=(0.1,)).grid()) == 2 * len(TuneConfig(lrs=(1e-5,), betas=(0.1,)).grid())


def test_a_damaged_stage_file_is_one_line_naming_it(tuned: tuple[Path, dict], small_tune: TuneConfig,
                                                    tmp_path: Path) -> None:
    """(A finished point's curve damaged since it was written was a JSONDecodeError traceback on the rerun.)"""
    from unigap.study.tune import CURVE_FILE

    out, results = tuned
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    curve = copy / "runs" / results["runs"][0]["name"] / CURVE_FILE
    curve.write_text(curve.read_text()[:20])
    with pytest.raises(UserError, match=f"cannot read {curve}: "):
        tune(small_tune, copy)
