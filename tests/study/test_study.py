"""`unigap study`: every stage runs into the documented layout, reruns skip finished jobs, a killed study
resumes to the same numbers, and other settings on the same directory are refused."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unigap.cli import main
from unigap.errors import UserError
from unigap.model.checkpoint import weights_fingerprint
from unigap.report import build_report
from unigap.study import StudyConfig, run_study
from unigap.study.run import JOBS_FILE, StudyRunner

METHODS = ["base", "und-only", "gen-only", "pcgrad", "soup-0.3", "soup-0.5", "soup-0.7", "oracle"]


def _jobs(out: Path) -> list[str]:
    return [json.loads(line)["job"] for line in (out / JOBS_FILE).read_text().splitlines()]


def test_study_writes_every_run_and_the_report(finished: Path) -> None:
    for method in METHODS:
        for seed in (0, 1):
            report = json.loads((finished / method / f"seed{seed}" / "eval.json").read_text())
            assert report["config"]["method"] == method and report["config"]["seed"] == seed
            assert report["understanding"]["n"] == 3
    for strategy in ("und-only", "gen-only", "pcgrad"):
        run = finished / strategy / "seed1"
        assert (run / "adapter_model.safetensors").is_file()
        assert len((run / "log.jsonl").read_text().splitlines()) == 2
        assert not (run / "checkpoint").exists()  # dropped once the run is evaluated
    assert (finished / "soup-0.5" / "seed0" / "adapter_config.json").is_file()
    base = json.loads((finished / "base" / "seed1" / "eval.json").read_text())
    assert len(list((finished / "base" / "seed1" / "images").glob("*.png"))) == len(base["records"]["generation"])
    for method in METHODS[1:]:  # the understanding win rate on the base's images: trained arms only
        win = json.loads((finished / method / "seed1" / "eval.json").read_text()).get("win_rate")
        assert (win is not None) == (method in ("und-only", "gen-only", "pcgrad")), method
        assert win is None or (0 <= win["n"] <= 3 and win["wins"] <= win["n"])
    diagnostics = json.loads((finished / "base" / "seed0" / "diagnostics.json").read_text())
    assert diagnostics["n"] == 4
    results = json.loads((finished / "results.json").read_text())
    assert results["methods"] == METHODS
    assert (finished / "report.html").read_text().count("<img") >= 2
    assert (finished / "results.csv").read_text().startswith("method")
    # base evals, pairs, diagnostics, per seed 3 + 4 arms, the answer-length probe
    assert len(_jobs(finished)) == 2 + 2 + 1 + 2 * (3 + 4) + 1


def test_an_answer_form_killed_before_its_result_is_saved_keeps_its_checkpoint(finished: Path, small_config, tmp_path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint was removed before the form's result was written: a kill between them lost the whole run."""
    from rich.progress import Progress

    import unigap.study.answer_length as probe

    out = tmp_path / "study"
    shutil.copytree(finished, out)
    (out / "answer-length" / "word.json").unlink()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "_against_base", killed)
    with pytest.raises(KeyboardInterrupt), Progress(disable=True) as progress:
        probe.answer_length(StudyRunner(small_config, out, progress))
    assert (out / "answer-length" / "word" / "checkpoint").is_dir()


def test_the_answer_length_probe_and_the_claims_reach_the_report(finished: Path) -> None:
    probe = json.loads((finished / "answer-length" / "answer_length.json").read_text())
    for form in ("word", "sentence"):
        row = probe["forms"][form]
        assert row["ratio"] > 0 and len(row["ratios"]) == 4 and set(row["understanding"]) == {"delta", "delta_ci95", "p"}
        assert json.loads((finished / "answer-length" / f"{form}.json").read_text())["ratio"] == row["ratio"]
        assert not (finished / "answer-length" / form / "checkpoint").exists()
    assert probe["forms"]["sentence"]["answer_tokens"] > probe["forms"]["word"]["answer_tokens"]
    assert "Answering in a full sentence" in probe["finding"]
    results = json.loads((finished / "results.json").read_text())
    assert results["answer_length"]["finding"] == probe["finding"] and "ratios" not in results["answer_length"]["forms"]["word"]
    [claim] = results["claims"]  # one family ran: P1's claim, decided by und-only against the base
    assert claim["family"] == "p1" and claim["arm"] == "und-only"
    assert claim["verdict"] in ("reproduced", "not reproduced", "contradicted")
    assert set(results["wall_seconds"]) == set(METHODS) and all(v > 0 for v in results["wall_seconds"].values())
    html = (finished / "report.html").read_text()
    assert "wall (min)" in html and "answer length" in html and "The papers' claims" in html


def test_rerun_skips_finished_jobs(tmp_path: Path, finished: Path, small_config: StudyConfig) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = (out / "results.json").read_text()
    run_study(small_config, out, show_progress=False)
    assert _jobs(out) == _jobs(finished)  # nothing ran again
    assert (out / "results.json").read_text() == before


def test_killed_study_resumes_to_the_same_numbers(
    tmp_path: Path, finished: Path, small_config: StudyConfig, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Kill the study after PCGrad seed 1 has trained but before it is evaluated, then rerun it."""
    out = tmp_path / "killed"
    shutil.copytree(finished, out)
    for method in ("pcgrad", "soup-0.3", "soup-0.5", "soup-0.7", "oracle"):
        shutil.rmtree(out / method / "seed1")
    evaluate = StudyRunner.evaluate

    def killed(self: StudyRunner, um: object, method: str, seed: int) -> None:
        if method == "pcgrad":
            raise KeyboardInterrupt
        evaluate(self, um, method, seed)

    monkeypatch.setattr(StudyRunner, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(small_config, out, show_progress=False)
    assert (out / "pcgrad" / "seed1" / "checkpoint" / "checkpoint.pt").is_file()
    cut = json.loads((out / "jobs.jsonl").read_text().splitlines()[-1])  # the killed attempt's time is counted
    assert cut["job"] == "pcgrad, seed 1" and cut["interrupted"] is True and cut["seconds"] > 0
    with (out / "jobs.jsonl").open("a") as jobs:
        jobs.write('{"job": "soup')  # and a row a second kill cut off
    monkeypatch.setattr(StudyRunner, "evaluate", evaluate)
    capsys.readouterr()
    build_report(run_study(small_config, out), out)
    assert all(json.loads(line)["job"] for line in (out / "jobs.jsonl").read_text().splitlines())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study")]  # (not transformers')
    total = len(_jobs(finished))
    assert lines and len(lines) < total and all(re.fullmatch(rf"study: job \d+/{total}: .+", line) for line in lines)
    assert any("pcgrad" in line for line in lines)  # not a terminal: a line per job that runs, none for finished ones
    for method in ("pcgrad", "soup-0.5", "oracle"):
        again = json.loads((out / method / "seed1" / "eval.json").read_text())
        first = json.loads((finished / method / "seed1" / "eval.json").read_text())
        assert again["records"] == first["records"]
    assert json.loads((out / "results.json").read_text())["results"] == json.loads(
        (finished / "results.json").read_text()
    )["results"]


def test_a_rerun_with_more_arms_adds_them_and_one_with_fewer_runs_nothing(
    tmp_path: Path, finished: Path, small_config: StudyConfig, capsys
) -> None:
    out = tmp_path / "more"
    shutil.copytree(finished, out)
    capsys.readouterr()
    run_study(small_config.scaled(methods=("joint",)), out)
    assert f"study: adding joint to the study in {out}" in capsys.readouterr().err.splitlines()
    assert _jobs(out)[len(_jobs(finished)):] == ["joint, seed 0", "joint, seed 1"]  # the rest was there already
    saved = json.loads((out / "study.json").read_text())
    assert saved["methods"] == [*small_config.methods_in_order(), "joint"]  # every arm the folder holds, its soups
    assert "soup-0.5" in saved["methods"] and "soup-0.5" not in small_config.methods  # (the post-hoc arms too)
    results = build_report(out, out).results
    assert results["methods"] == [*METHODS[:3], "joint", *METHODS[3:]]
    run_study(small_config.scaled(methods=("und-only",)), out, show_progress=False)
    assert len(_jobs(out)) == len(_jobs(finished)) + 2
    assert json.loads((out / "study.json").read_text())["methods"] == saved["methods"]


def test_a_checkpoint_left_by_a_kill_after_the_evaluation_is_dropped_on_rerun(tmp_path: Path, finished: Path,
                                                                               small_config: StudyConfig) -> None:
    """A run killed between writing its eval.json and dropping its resume checkpoint was never run again: its
    LoRA, heads and optimiser state stayed for good."""
    out = tmp_path / "killed"
    shutil.copytree(finished, out)
    left = out / "und-only" / "seed1" / "checkpoint"
    assert not left.exists() and (left.parent / "adapter_model.safetensors").is_file()  # (dropped, adapter kept)
    left.mkdir()
    (left / "checkpoint.pt").write_bytes(b"state")
    run_study(small_config, out, show_progress=False)
    assert not left.exists() and _jobs(out) == _jobs(finished)  # (dropped, and nothing run again)


def test_the_manifest_of_a_rerun_lists_every_arm_of_the_folder(
    tmp_path: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun with one arm adds it to the folder; its manifest must not say the folder holds only that arm."""
    import unigap.study

    out = tmp_path / "more"
    shutil.copytree(finished, out)
    study = json.loads((out / "study.json").read_text())
    (out / "study.json").write_text(json.dumps(study | {"methods": [*study["methods"], "joint"]}))
    monkeypatch.setattr(unigap.study, "run_study", lambda config, folder: folder)  # as if the joint runs were done
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--model", study["model"], "--methods", "joint", "--out", str(out)])
    assert exit_info.value.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "study" and manifest["config"]["methods"] == [*study["methods"], "joint"]
    assert manifest["device"] == "cpu"  # (it was null in every study's and tuning run's manifest)


def test_other_settings_on_the_same_directory_are_refused(finished: Path, small_config: StudyConfig) -> None:
    with pytest.raises(UserError, match="steps: 2 → 3"):
        run_study(small_config.scaled(steps=3), finished, show_progress=False)


def test_other_weights_under_the_same_model_name_are_refused(
    tmp_path: Path, finished: Path, small_config: StudyConfig
) -> None:
    """A retrained model saved where the old one was must not resume the old model's study."""
    saved = json.loads((finished / "study.json").read_text())
    assert saved["model_weights"] == weights_fingerprint(small_config.model)
    study = tmp_path / "study"
    shutil.copytree(finished, study)
    (study / "study.json").write_text(json.dumps(saved | {"model_weights": "0123456789abcdef"}))
    with pytest.raises(UserError, match="model_weights: \"0123456789abcdef\" → "):
        run_study(small_config, study, show_progress=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": 1}, "at least 2"),
        ({"methods": ("und-only", "sideways")}, "unknown arm 'sideways'"),
        ({"n": 0}, "n must be positive"),
        ({"n": 1}, r"--n must be at least 2 \(the paired test"),
        ({"self_prompts": 0}, "self-prompts must be positive"),  # (these four were not checked: Python API only)
        ({"self_epochs": 0}, "self-epochs must be positive"),
        ({"sweep_probes": -3}, "sweep-probes must be >= 0"),
        ({"refine_rounds": -1}, "refine-rounds must be >= 0"),
    ],
)
def test_bad_settings_are_user_errors(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        StudyConfig(**changes)


def test_post_hoc_methods_need_both_single_task_runs() -> None:
    assert StudyConfig(methods=("joint", "und-only")).methods_in_order() == ["und-only", "joint"]
    assert "oracle" in StudyConfig().methods_in_order()


def test_cli_reports_bad_flags_without_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--seeds", "1", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "unigap: error: --seeds must be at least 2" in capsys.readouterr().err


def test_a_missing_model_fails_before_the_directory_is_claimed(tmp_path: Path, small_config: StudyConfig) -> None:
    """Otherwise the typo would be pinned in study.json and the corrected rerun refused."""
    out = tmp_path / "s"
    with pytest.raises(UserError, match="does not exist"):
        run_study(small_config.scaled(model=str(tmp_path / "nope")), out, show_progress=False)
    assert not (out / "study.json").exists()


def test_a_study_from_before_the_edit_scales_resumes_unless_its_arms_edit(tmp_path: Path,
                                                                          small_config: StudyConfig) -> None:
    """Its refine arms edited under plain CFG at 5: such a study is not resumed under the current scales."""
    from unigap.study import claim

    guidance = {"edit_cfg_scale": 2.0, "edit_image_cfg_scale": 1.5}
    for config, edits in ((small_config, False), (small_config.scaled(methods=("refine",)), True)):
        out = tmp_path / f"edits-{edits}"
        out.mkdir()
        (out / "study.json").write_text(json.dumps(config.to_dict() | {"model_weights": "w"}))  # as written before
        if edits:
            with pytest.raises(UserError, match=r"edit_cfg_scale: \(absent\) → 2.0"):
                claim(config, out, "w", guidance)
            with pytest.raises(UserError, match=r"edit_cfg_scale: \(absent\) → 2.0"):  # nor by adding another arm
                claim(small_config.scaled(methods=("joint",)), out, "w", guidance)
        else:
            claim(config, out, "w", guidance)
            assert json.loads((out / "study.json").read_text())["edit_image_cfg_scale"] == 1.5  # recorded from now on
            claim(config, out, "w", guidance | {"edit_cfg_scale": 3.0})  # and free to change: no arm of it edits
            assert json.loads((out / "study.json").read_text())["edit_cfg_scale"] == 3.0
            # an arm that edits joins under the library's scales: the ones recorded while nothing edited held no
            # numbers (it was refused, and the folder's hours of runs with it)
            claim(small_config.scaled(methods=("refine",)), out, "w", guidance)
            assert json.loads((out / "study.json").read_text())["edit_cfg_scale"] == 2.0
            with pytest.raises(UserError, match=r"edit_cfg_scale: 2.0 → 3.0"):  # from then on they are its own
                claim(small_config.scaled(methods=("refine",)), out, "w", guidance | {"edit_cfg_scale": 3.0})


def test_a_family_budget_is_free_in_a_folder_where_no_arm_of_the_family_ran(tmp_path: Path) -> None:
    """A --quick study from before the other families' budgets were settings (its arms all P1) resumes under
    --quick, whose budgets are not the full preset's; once an arm of a family ran, its budget is held."""
    from unigap.study import QUICK, claim
    from unigap.arms import ARMS

    p1 = tuple(name for name, arm in ARMS.items() if arm.family == "p1" and arm.kind == "trained")
    budgets = ("self_prompts", "self_epochs", "refine_rounds", "grpo_steps", "unimrg_steps", "unimrg_scenes")
    old = {k: v for k, v in QUICK.scaled(methods=p1).to_dict().items() if k not in budgets}
    (tmp_path / "study.json").write_text(json.dumps(old | {"model_weights": "w"}))
    added = claim(QUICK, tmp_path, "w")
    assert "self-sft" in added and json.loads((tmp_path / "study.json").read_text())["self_prompts"] == QUICK.self_prompts
    with pytest.raises(UserError, match=r"self_prompts: 8 → 9"):  # self-sft is asked of the folder now
        claim(QUICK.scaled(self_prompts=9), tmp_path, "w")
    fresh = tmp_path / "p1"
    claim(QUICK.scaled(methods=("joint",)), fresh, "w")
    claim(QUICK.scaled(methods=("joint",), refine_rounds=2, unimrg_steps=5), fresh, "w")  # no arm reads them
    with pytest.raises(UserError, match=r"steps: 6 → 7"):  # but a P1 budget is held
        claim(QUICK.scaled(methods=("joint",), steps=7), fresh, "w")


def test_an_arm_not_registered_now_holds_every_budget(tmp_path: Path, small_config: StudyConfig) -> None:
    """A user's arm in the folder, not registered by the process resuming it, may have read any family's budget: a
    rerun without it must not free (and overwrite) the budget its finished seeds trained under."""
    from unigap.study import claim

    config = small_config.scaled(methods=("joint",))
    claim(config, tmp_path, "w")
    record = json.loads((tmp_path / "study.json").read_text())
    (tmp_path / "study.json").write_text(json.dumps(record | {"methods": ["my-self", "joint"]}))
    with pytest.raises(UserError, match=rf"self_prompts: {config.self_prompts} → 9"):
        claim(config.scaled(self_prompts=9), tmp_path, "w")


def test_a_study_is_resumed_in_the_dtype_it_ran_in(tmp_path: Path, small_config: StudyConfig) -> None:
    """A study started on a GPU (bf16 by default) is not resumed on a CPU (float32); one from before the dtype was
    recorded is, its dtype unknown."""
    from unigap.study import claim

    claim(small_config, tmp_path / "gpu", "w", dtype="bfloat16")
    with pytest.raises(UserError, match=r'model_dtype: "bfloat16" → "float32"'):
        claim(small_config, tmp_path / "gpu", "w", dtype="float32")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.json").write_text(json.dumps(small_config.to_dict() | {"model_weights": "w"}))
    claim(small_config, tmp_path / "old", "w", dtype="float32")
    assert json.loads((tmp_path / "old" / "study.json").read_text())["model_dtype"] == "float32"


def test_the_answer_forms_are_paired_batch_by_batch_only_where_they_drew_the_same_generation_pairs() -> None:
    """The diagnosis draws its generation order after the und order from one generator: und files of different
    lengths draw other generation pairs, and a paired test of the batches' log ratios would pair unrelated batches."""
    from scipy import stats as sps

    from unigap.study.answer_length import compare_forms

    rng = np.random.default_rng(0)
    word, sentence = rng.lognormal(-3.0, 0.5, 40), rng.lognormal(-2.8, 0.5, 40)
    paired = compare_forms({"pairs": 256, "ratios": list(word)}, {"pairs": 256, "ratios": list(sentence)}, 40)
    assert paired["test"] == "paired" and paired["batches"] == 40
    assert paired["p"] == pytest.approx(sps.ttest_rel(np.log(sentence), np.log(word)).pvalue)
    apart = compare_forms({"pairs": 256, "ratios": list(word)}, {"pairs": 250, "ratios": list(sentence)}, 40)
    assert apart["test"] == "welch"
    # one batch dropped in each form (a ρ not finite), at other places: the lists line up no more
    dropped = compare_forms({"pairs": 256, "ratios": list(word[1:])}, {"pairs": 256, "ratios": list(sentence[:-1])}, 40)
    assert dropped["test"] == "welch" and dropped["batches"] == 39
    assert apart["p"] == pytest.approx(sps.ttest_ind(np.log(sentence), np.log(word), equal_var=False).pvalue)
    assert apart["geometric_mean"] == pytest.approx(math.exp(np.log(sentence).mean() - np.log(word).mean()))


def test_the_grpo_arm_scores_in_the_studys_micro_batches_and_may_resume_under_others(tmp_path: Path,
                                                                                      small_config: StudyConfig,
                                                                                      monkeypatch) -> None:
    """A Janus-Pro-1B study's refine-grpo arm needs GRPO's micro-batches (about 85 GiB a generation step without),
    which the study could not pass; they change only rounding, so a study resumes under another size."""
    from types import SimpleNamespace

    import unigap.refine.grpo as grpo
    from unigap.study import claim
    from unigap.study.builders import refine_grpo

    given = []

    def stop(um, config, out, **kwargs):
        given.append(config.micro_batch_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(grpo, "train_grpo", stop)
    config = small_config.scaled(methods=("refine-grpo",), grpo_micro_batch_size=4, grpo_steps=2)
    from contextlib import nullcontext

    runner = SimpleNamespace(config=config, model=lambda: None, run_dir=lambda name, seed: tmp_path / name,
                             bar=lambda description, total: nullcontext(lambda done=None: None))
    with pytest.raises(KeyboardInterrupt):
        refine_grpo(runner, "refine-grpo", 0)
    assert given == [4]
    claim(config, tmp_path, "w")
    claim(config.scaled(grpo_micro_batch_size=1), tmp_path, "w")  # (refused as other settings before)
    with pytest.raises(UserError, match="grpo_micro_batch_size must be positive"):
        small_config.scaled(grpo_micro_batch_size=0)


def test_an_inference_time_arm_judges_its_images_in_the_studys_batches(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """The refine and best-of-n arms judged all n final images in one forward (about n × 610 tokens on a
    Janus-Pro: out of memory at --n 1000, after the loop had run); the base judges in batches of --batch-size."""
    from types import SimpleNamespace

    from unigap.model import load_model
    from unigap.study.builders import _with_final_images

    um = load_model("tiny")
    config = SimpleNamespace(n=5, batch_size=2, data_seed=0, model="tiny", refine_rounds=0)
    runner = SimpleNamespace(config=config, add_win_rate=lambda *args: None,
                             eval_file=lambda name, seed: tmp_path / name / f"seed{seed}" / "eval.json")
    judged, judge = [], um.judge
    monkeypatch.setattr(um, "judge", lambda images, prompts: judged.append(len(images)) or judge(images, prompts))
    white = Image.new("RGB", (64, 64), "white")
    given = []
    _with_final_images(runner, "best-of-n", 0, um, lambda model, specs, seed, one_shot: (
        given.extend(one_shot) or [white] * len(specs), None))
    report = json.loads((tmp_path / "best-of-n" / "seed0" / "eval.json").read_text())
    records = report["records"]["generation"]
    assert [r["index"] for r in records] == list(range(5)) and not any(r["verified"] for r in records)
    assert judged and max(judged) <= 2  # (the evaluation's own and the final images' judging alike)
    from unigap.evaluate import evaluate

    base: list[Image.Image] = []  # the arm starts from the base's own one-shot images: same prompts, seeds, batches
    evaluate(load_model("tiny"), 5, 0, batch_size=2, critique=False, progress=False, on_images=base.extend)
    assert [image.tobytes() for image in given] == [image.tobytes() for image in base]
